"""Shipped calibration files: udev rules name every arm and camera and set the 1 ms latency timer;
gripper presets load and equal the published tables; the hardware guide documents the install."""
from __future__ import annotations

import re

import pytest

from cosmos_policy_core.calibration.files import CALIBRATION_DIR, REPO_ROOT, load_gripper_constants
from cosmos_policy_core.robot.gripper import GripperConstants


def rules(name: str) -> list[str]:
    text = (CALIBRATION_DIR / "udev" / name).read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_arm_rules_name_all_four_ports_with_a_1ms_latency_timer():
    lines = rules("99-aloha-arms.rules")
    links = sorted(re.search(r'SYMLINK\+="([^"]+)"', line).group(1) for line in lines)
    assert links == sorted(f"ttyDXL_{r}_{s}" for r in ("leader", "follower") for s in ("left", "right"))
    assert all('ATTR{device/latency_timer}="1"' in line and 'SUBSYSTEM=="tty"' in line for line in lines)
    assert len({re.search(r'ATTRS\{serial\}=="([^"]+)"', line).group(1) for line in lines}) == 4


def test_camera_rules_match_the_cameras_node_defaults():
    from cosmos_aloha.cameras_node import PARAMETERS

    devices = next(p.default for p in PARAMETERS if p.name == "devices")
    lines = rules("99-aloha-cameras.rules")
    links = {"/dev/" + re.search(r'SYMLINK\+="([^"]+)"', line).group(1) for line in lines}
    assert len(devices) == 3 and set(devices) <= links
    assert all('ATTR{index}=="0"' in line for line in lines)


@pytest.mark.parametrize("name", ["aloha2", "original_aloha"])
def test_gripper_preset_files_equal_the_code_presets(name):
    assert load_gripper_constants(f"calibration/grippers/{name}.yaml") == GripperConstants.preset(name)


def test_hardware_guide_documents_the_udev_install_command():
    guide = (REPO_ROOT / "docs" / "hardware.md").read_text()
    assert "sudo cp calibration/udev/*.rules /etc/udev/rules.d/" in guide
    for command in ("calibrate grippers", "calibrate cameras", "calibrate check"):
        assert f"cosmos-aloha {command}" in guide
