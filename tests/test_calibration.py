"""Calibration: gripper constants from recorded joint states, camera intrinsics from synthetic
chessboard views with known K, and the zero check flagging an offset joint."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cosmos_policy_core.calibration.cameras import BoardSpec, CameraIntrinsics, calibrate_camera
from cosmos_policy_core.calibration.check import check_follower_qpos
from cosmos_policy_core.calibration.grippers import (
    CalibrationError,
    gripper_constants_from_recordings,
    record_gripper_phases,
)
from cosmos_policy_core.robot.arm_layout import SLEEP_ARM_POSE, START_ARM_POSE, ArmState
from cosmos_policy_core.robot.gripper import GripperConstants

TRUE = GripperConstants.aloha2()


class FakeDriver:
    """Grippers that follow the prompts: a ramp to the requested end, then held with sensor noise."""

    def __init__(self, truth: GripperConstants, seed: int = 0):
        self.truth, self.rng = truth, np.random.default_rng(seed)
        self.phase: dict[tuple[str, str], str] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.prompts: list[str] = []

    def prompt(self, text: str) -> None:
        self.prompts.append(text)
        words = text.split()
        role, side = words[3].split("_")
        self.phase[(role, side)] = "open" if "OPEN" in text else "close"
        self.counts[(role, side)] = 0

    def read(self, role: str, side: str) -> ArmState:
        phase = self.phase[(role, side)]
        n = self.counts[(role, side)]
        self.counts[(role, side)] = n + 1
        t = self.truth
        joint = getattr(t, f"{role}_joint_{phase}")
        position = getattr(t, f"{role}_position_{phase}")
        if n < 3:  # the first samples still show the motion toward the end
            other = "close" if phase == "open" else "open"
            w = n / 3
            joint = w * joint + (1 - w) * getattr(t, f"{role}_joint_{other}")
            position = w * position + (1 - w) * getattr(t, f"{role}_position_{other}")
        return ArmState((0.0,) * 6, joint + self.rng.normal(0, 0.002), position + self.rng.normal(0, 2e-5))


def test_gripper_calibration_from_fake_driver_recovers_constants():
    driver = FakeDriver(TRUE)
    recordings = record_gripper_phases(driver, driver.prompt, samples=25, period_s=0.0)
    assert len(driver.prompts) == 8 and "OPEN fully the leader_left" in driver.prompts[0]
    result = gripper_constants_from_recordings(recordings, name="lab_robot")
    c = result.constants
    assert c.name == "lab_robot"
    for field in ("leader_joint_open", "leader_joint_close", "follower_joint_open", "follower_joint_close"):
        assert getattr(c, field) == pytest.approx(getattr(TRUE, field), abs=0.003), field
    for field in ("leader_position_open", "leader_position_close", "follower_position_open", "follower_position_close"):
        assert getattr(c, field) == pytest.approx(getattr(TRUE, field), abs=5e-5), field
    assert result.warnings == ()
    assert "follower_right" in result.report()


def test_gripper_calibration_round_trips_through_yaml(tmp_path):
    driver = FakeDriver(TRUE)
    result = gripper_constants_from_recordings(record_gripper_phases(driver, driver.prompt, 10, 0.0), "x")
    path = tmp_path / "x.yaml"
    result.constants.to_yaml(path)
    assert GripperConstants.load(path) == result.constants


def test_gripper_calibration_rejects_a_gripper_that_did_not_move_and_swapped_phases():
    driver = FakeDriver(TRUE)
    rec = record_gripper_phases(driver, driver.prompt, 10, 0.0)
    frozen = dict(rec)
    frozen[("follower", "right", "close")] = rec[("follower", "right", "open")]
    with pytest.raises(CalibrationError, match="follower_right: gripper joint moved only"):
        gripper_constants_from_recordings(frozen)
    swapped = dict(rec)
    swapped[("leader", "left", "open")], swapped[("leader", "left", "close")] = rec[("leader", "left", "close")], rec[("leader", "left", "open")]
    with pytest.raises(CalibrationError, match="leader_left: the 'open' reading is smaller"):
        gripper_constants_from_recordings(swapped)
    del swapped[("leader", "left", "open")]
    with pytest.raises(CalibrationError, match="no samples recorded"):
        gripper_constants_from_recordings(swapped)


def test_gripper_calibration_warns_when_sides_disagree():
    driver = FakeDriver(TRUE)
    rec = record_gripper_phases(driver, driver.prompt, 10, 0.0)
    rec[("follower", "left", "open")] = [ArmState(s.arm, s.gripper_joint + 0.3, s.finger_position, 0)
                                         for s in rec[("follower", "left", "open")]]
    result = gripper_constants_from_recordings(rec)
    assert any("follower joint open differs between sides" in w for w in result.warnings)
    assert result.constants.follower_joint_open == pytest.approx(TRUE.follower_joint_open + 0.15, abs=0.003)


# -- cameras ----------------------------------------------------------------------------------------

def render_views(K: np.ndarray, board: BoardSpec, size=(640, 480), n_views: int = 10, seed: int = 3):
    """Planar chessboard textures warped into the image through H = K [r1 r2 t] at varied poses."""
    import cv2

    rng = np.random.default_rng(seed)
    px_per_square, margin = 60, 60
    squares_x, squares_y = board.cols + 1, board.rows + 1
    tex_w, tex_h = squares_x * px_per_square + 2 * margin, squares_y * px_per_square + 2 * margin
    texture = np.full((tex_h, tex_w), 255, np.uint8)
    for i in range(squares_y):
        for j in range(squares_x):
            if (i + j) % 2 == 0:
                y0, x0 = margin + i * px_per_square, margin + j * px_per_square
                texture[y0 : y0 + px_per_square, x0 : x0 + px_per_square] = 0
    # Texture pixel -> board metres, origin at the first inner corner (matches object_points()).
    m_per_px = board.square_m / px_per_square
    offset = margin + px_per_square
    A = np.array([[m_per_px, 0, -offset * m_per_px], [0, m_per_px, -offset * m_per_px], [0, 0, 1]])
    center = np.array([board.cols - 1, board.rows - 1, 0]) * board.square_m / 2
    views = []
    for k in range(n_views):
        rvec = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)])
        R, _ = cv2.Rodrigues(rvec)
        t = np.array([rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03), rng.uniform(0.38, 0.55)]) - R @ center
        H = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ A
        image = cv2.warpPerspective(texture, H, size, flags=cv2.INTER_AREA, borderValue=128)
        image = cv2.GaussianBlur(image, (3, 3), 0.6)
        views.append((f"view_{k:02d}.png", cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)))
    return views


def test_camera_calibration_recovers_known_intrinsics(tmp_path):
    K = np.array([[610.0, 0, 322.0], [0, 606.0, 243.0], [0, 0, 1]])
    board = BoardSpec("chessboard", cols=9, rows=6, square_m=0.025)
    result = calibrate_camera(render_views(K, board), board, "cam_high")
    i = result.intrinsics
    assert len(result.used) >= 8, result.rejected
    assert i.fx == pytest.approx(610.0, rel=0.01) and i.fy == pytest.approx(606.0, rel=0.01)
    assert i.cx == pytest.approx(322.0, abs=6) and i.cy == pytest.approx(243.0, abs=6)
    assert result.rms_px < 0.5 and max(result.per_view_px) < 0.5
    path = tmp_path / "cam_high.yaml"
    i.to_yaml(path)
    loaded = CameraIntrinsics.from_yaml(path)
    assert loaded == i
    assert loaded.P[:3] == i.K[:3] and loaded.P[3] == 0.0
    assert "reprojection RMS" in result.report_text()


def test_charuco_calibration_recovers_known_intrinsics():
    import cv2

    K = np.array([[600.0, 0, 318.0], [0, 600.0, 238.0], [0, 0, 1]])
    board = BoardSpec("charuco", cols=7, rows=5, square_m=0.03, marker_m=0.022)
    px, margin = 80, 40
    texture = board.charuco_board().generateImage((board.cols * px + 2 * margin, board.rows * px + 2 * margin), marginSize=margin)
    m_per_px = board.square_m / px
    A = np.array([[m_per_px, 0, -margin * m_per_px], [0, m_per_px, -margin * m_per_px], [0, 0, 1]])
    center = np.array([board.cols, board.rows, 0]) * board.square_m / 2
    rng = np.random.default_rng(7)
    views = []
    for k in range(8):
        R, _ = cv2.Rodrigues(np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.45, 0.45), rng.uniform(-0.2, 0.2)]))
        t = np.array([0.0, 0.0, rng.uniform(0.4, 0.5)]) - R @ center
        H = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ A
        views.append((f"v{k}", cv2.warpPerspective(texture, H, (640, 480), flags=cv2.INTER_AREA, borderValue=128)))
    result = calibrate_camera(views, board, "cam_left_wrist")
    assert result.intrinsics.fx == pytest.approx(600.0, rel=0.01)
    assert result.intrinsics.fy == pytest.approx(600.0, rel=0.01)
    assert result.rms_px < 0.5


def test_camera_calibration_rejects_wrong_board_size():
    K = np.array([[610.0, 0, 320.0], [0, 610.0, 240.0], [0, 0, 1]])
    views = render_views(K, BoardSpec(cols=9, rows=6), n_views=5)
    with pytest.raises(CalibrationError, match="found in 0 of 5"):
        calibrate_camera(views, BoardSpec(cols=7, rows=5), "cam_low")


# -- zero check -------------------------------------------------------------------------------------

def qpos(left, right, grippers=(0.5, 0.5)):
    return np.array([*left, grippers[0], *right, grippers[1]], dtype=np.float64)


def test_check_passes_arms_at_rest_and_at_start():
    report = check_follower_qpos(qpos(np.array(SLEEP_ARM_POSE) + 0.02, START_ARM_POSE))
    assert report.ok, report.text()
    assert [a.nearest_pose for a in report.arms] == ["sleep", "start"]


def test_check_flags_a_joint_offset_by_a_quarter_turn():
    left = np.array(SLEEP_ARM_POSE)
    left[4] += math.pi / 2  # wrist_angle motor zeroed a quarter turn off
    report = check_follower_qpos(qpos(left, SLEEP_ARM_POSE))
    assert not report.ok
    assert len(report.flags) == 1 and report.flags[0].startswith("follower_left wrist_angle")
    assert "+90°" in report.flags[0]
    assert report.arms[0].joints[4].from_sleep == pytest.approx(math.pi / 2)


def test_check_flags_arm_away_from_poses_and_bad_gripper_normalisation():
    report = check_follower_qpos(qpos(np.array([1.0, 0.5, -0.5, 1.0, 1.0, 1.0]), START_ARM_POSE, (0.5, 3.2)))
    assert any("follower_left: not near the sleep or start pose" in f for f in report.flags)
    assert any("follower_right gripper reads 3.20" in f for f in report.flags)
