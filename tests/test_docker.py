"""The docker image: the README's install recipe at pinned versions, every copied path present, and the steps that need
no Docker (the colcon workspace with its launch files) run here by the same script the Dockerfile calls."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
CONSTRAINTS = REPO / "docker" / "constraints.txt"


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_with_the_readme_recipe():
    runs = [rest for kw, rest in _instructions(DOCKERFILE.read_text()) if kw == "RUN"]
    assert any("scripts/install.sh" in r for r in runs), "the image must install with scripts/install.sh"
    makefile = (REPO / "Makefile").read_text()
    assert "scripts/install.sh" in makefile, "README's make targets must use the same recipe"
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_every_copied_path_exists():
    copies = [rest for kw, rest in _instructions(DOCKERFILE.read_text()) if kw == "COPY"]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_compose_runs_the_bringup_launch_file():
    compose = (REPO / "docker" / "compose.yaml").read_text()
    assert "ros2 launch cosmos_aloha bringup.launch.py" in compose
    assert "dockerfile: docker/Dockerfile" in compose


def _runs() -> list[str]:
    return [rest for kw, rest in _instructions(DOCKERFILE.read_text()) if kw == "RUN"]


def test_workspace_script_builds_the_package_with_real_launch_files(tmp_path):
    """What the image's `cp -r` got wrong: the package's launch/ is a relative symlink, dangling once copied."""
    colcon = Path(sys.executable).parent / "colcon"
    colcon = str(colcon) if colcon.exists() else shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon not installed (dev extra)")
    ws = tmp_path / "ws"
    result = subprocess.run([str(REPO / "scripts" / "build_ros_workspace.sh"), str(ws)], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "COLCON": colcon}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    src = ws / "src" / "cosmos_aloha"
    assert not [p for p in src.rglob("*") if p.is_symlink()], "the workspace must hold files, not links"
    share = ws / "install" / "cosmos_aloha" / "share" / "cosmos_aloha"
    for launch in (REPO / "launch").glob("*.launch.py"):
        installed = share / "launch" / launch.name
        assert installed.is_file() and installed.read_text() == launch.read_text()
    ros2 = Path(sys.executable).parent / "ros2"
    if ros2.exists():  # the launch file is found through the built workspace's ament index, as in the image
        env = {**os.environ, "AMENT_PREFIX_PATH": str(ws / "install" / "cosmos_aloha")}
        shown = subprocess.run([str(ros2), "launch", "cosmos_aloha", "bringup.launch.py", "--show-args"],
                               capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert shown.returncode == 0 and "'checkpoint'" in shown.stdout, shown.stdout + shown.stderr


def test_dockerfile_builds_the_workspace_with_that_script():
    runs = _runs()
    assert any("scripts/build_ros_workspace.sh /opt/cosmos_ws" in r for r in runs)
    assert not any(re.search(r"\bcp\b.*ros2_ws", r) for r in runs), "copy the package with the script, not cp"
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert "/opt/cosmos_ws/install/setup.bash" in entrypoint


def test_interbotix_repositories_are_pinned_with_their_submodules_and_rosdep():
    text = DOCKERFILE.read_text()
    for repo in ("interbotix_ros_core", "interbotix_ros_toolboxes", "interbotix_ros_manipulators"):
        arg = f"INTERBOTIX_{repo.removeprefix('interbotix_ros_').upper()}_COMMIT"
        assert re.search(rf"ARG {arg}=[0-9a-f]{{40}}\n", text), f"{repo} must be pinned to a commit ({arg})"
        assert re.search(rf"clone {repo} \"\${{{arg}}}\"", text)
    install = next(r for r in _runs() if "interbotix_ros_core" in r)
    assert "submodule update --init --recursive" in install
    assert "rosdep install --from-paths src" in install and "rosdep update" in install


def test_image_installs_the_engines_extras_at_the_tested_versions():
    install = next(r for r in _runs() if "scripts/install.sh" in r)
    extras = set(re.search(r"EXTRAS=(\S+)", install).group(1).split(","))
    assert {"onnx", "trt"} <= extras, "the image runs engine onnx and tensorrt"
    assert "PIP_CONSTRAINT=/opt/cosmos_aloha/docker/constraints.txt" in install
    assert "torch==2.13.0" in install

    from packaging.requirements import Requirement

    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = [Requirement(r) for r in project["dependencies"]]
    direct += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
    for req in direct:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in ("torch", "tensorrt"):   # the CUDA index's torch (TORCH_SPEC); TensorRT: the GPU machine's range
            continue
        assert name in pins, f"docker/constraints.txt does not pin {name}: run scripts/pin_image_requirements.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"
