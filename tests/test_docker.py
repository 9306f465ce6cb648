"""The docker image uses the README's install recipe, and every path it copies exists."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"


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
