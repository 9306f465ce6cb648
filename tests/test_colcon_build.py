"""The ROS 2 package builds with colcon (no ROS distro needed) and installs what `ros2 run`/`ros2 launch` use."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ros2_ws" / "src" / "cosmos_aloha"


def _colcon() -> str | None:
    candidate = Path(sys.executable).parent / "colcon"
    return str(candidate) if candidate.exists() else shutil.which("colcon")


def test_colcon_build_installs_nodes_launch_and_config(tmp_path):
    colcon = _colcon()
    if colcon is None:
        pytest.skip("colcon not installed (dev extra)")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(PACKAGE, src / "cosmos_aloha", symlinks=False)
    result = subprocess.run(
        [colcon, "build", "--packages-select", "cosmos_aloha"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    share = tmp_path / "install" / "cosmos_aloha" / "share" / "cosmos_aloha"
    assert (share / "package.xml").exists()
    assert (tmp_path / "install/cosmos_aloha/share/ament_index/resource_index/packages/cosmos_aloha").exists()
    lib = tmp_path / "install" / "cosmos_aloha" / "lib" / "cosmos_aloha"
    for node in ("aloha_sim", "executor", "policy", "planner", "aloha_driver", "cameras", "teleop"):
        assert (lib / node).exists(), f"console script for node {node} not installed"
    launch_files = sorted(p.name for p in (REPO / "launch").glob("*.launch.py"))
    assert sorted(p.name for p in (share / "launch").glob("*.launch.py")) == launch_files
    configs = sorted(p.name for p in (PACKAGE / "config").glob("*.yaml"))
    assert sorted(p.name for p in (share / "config").glob("*.yaml")) == configs
