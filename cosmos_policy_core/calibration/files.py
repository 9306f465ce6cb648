"""Where calibration files are found: as given, else relative to the repository's `calibration/`.

Nodes started by launch run from any directory; a relative `calibration/...` path in a parameter file
still means this repository's calibration folder.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CALIBRATION_DIR = REPO_ROOT / "calibration"


def resolve_calibration_path(path: str | Path) -> Path:
    """`path` if it exists (or is absolute), else the same relative path under the repository root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    candidate = REPO_ROOT / path
    return candidate if candidate.exists() else path


def load_gripper_constants(spec: str):
    """A preset name or a YAML path (resolved as above) -> GripperConstants."""
    from cosmos_policy_core.robot.gripper import GripperConstants

    if str(spec).endswith((".yaml", ".yml")):
        return GripperConstants.from_yaml(resolve_calibration_path(spec))
    return GripperConstants.preset(str(spec))
