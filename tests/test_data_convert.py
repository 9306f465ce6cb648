"""Dataset conversion: Interbotix bags, ALOHA HDF5 (raw / JPEG), 50 -> 25 Hz, bad inputs, statistics."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from cosmos_policy_core.data import resample
from cosmos_policy_core.data.bag_profile import BagProfile
from cosmos_policy_core.data.convert import (
    convert_bags,
    convert_hdf5,
    episode_from_hdf5,
    episode_segments,
)
from cosmos_policy_core.data.episode import CAMERAS, Episode, read_episode_hdf5, write_episode_hdf5
from cosmos_policy_core.data.stats import STAT_KEYS, StatsAccumulator
from cosmos_policy_core.errors import DataError

T0 = 1_700_000_000 * 10**9
H, W = 12, 16
INTERBOTIX_NAMES = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper",
                    "left_finger", "right_finger"]
CAM_TOPICS = {
    "cam_high": ("/cam_high/camera/color/image_rect_raw", 60.0, "bgr8"),
    "cam_left_wrist": ("/cam_left_wrist/camera/color/image_rect_raw", 50.0, "rgb8"),
    "cam_right_wrist": ("/cam_right_wrist/camera/color/image_rect_raw", 60.0, "rgb8"),
}
CAM_CODE = {"cam_high": 10, "cam_left_wrist": 20, "cam_right_wrist": 30}


# -- synthetic Interbotix bag ----------------------------------------------------------------------
def arm_positions(arm: str, t_s: float) -> np.ndarray:
    """9 entries of an Interbotix JointState; arm joints encode the arm and time, gripper fixed values."""
    base = {"follower_left": 0.0, "follower_right": -0.5, "leader_left": 0.1, "leader_right": -0.4}[arm]
    joints = base + 0.01 * np.arange(6) + t_s
    gripper_joint = 0.4 if arm.startswith("leader") else 1.0    # rad
    finger = 0.05 if arm.startswith("follower") else 0.03        # m
    return np.array([*joints, gripper_joint, finger, -finger])


def frame_rgb(cam: str, index: int) -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = index % 256
    image[..., 1] = CAM_CODE[cam]
    image[..., 2] = 200
    image[0, 0] = (1, 2, 3)   # asymmetric marker: catches any flip
    return image


def write_interbotix_bag(path: Path, seconds: float = 1.0, storage: str = "mcap", arms=None,
                         finger_entries: int = 9, high_encoding: str | None = None,
                         high_gap_s: tuple[float, float] | None = None, cameras=None) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image = ts.types["sensor_msgs/msg/Image"]
    JointState = ts.types["sensor_msgs/msg/JointState"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]

    def header(ns):
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="")

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    messages = []
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        for arm in arms or ("follower_left", "follower_right", "leader_left", "leader_right"):
            conn = writer.add_connection(f"/{arm}/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
            for i in range(int(seconds * 100) + 1):
                ns = T0 + i * 10_000_000
                pos = arm_positions(arm, i * 0.01)[:finger_entries]
                msg = JointState(header=header(ns), name=INTERBOTIX_NAMES[:finger_entries], position=pos,
                                 velocity=np.zeros(0), effort=np.zeros(0))
                messages.append((ns + 1_000_000, conn, ts.serialize_cdr(msg, "sensor_msgs/msg/JointState")))
        for cam, (topic, hz, encoding) in CAM_TOPICS.items():
            if cameras is not None and cam not in cameras:
                continue
            conn = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=ts)
            if cam == "cam_high" and high_encoding:
                encoding = high_encoding
            for i in range(int(round(seconds * hz)) + 1):
                ns = T0 + int(round(i * 1e9 / hz))
                if cam == "cam_high" and high_gap_s and high_gap_s[0] * 1e9 < ns - T0 < high_gap_s[1] * 1e9:
                    continue   # the camera stalled
                rgb = frame_rgb(cam, i)
                data = rgb[..., ::-1] if encoding == "bgr8" else rgb
                msg = Image(header=header(ns), height=H, width=W, encoding=encoding, is_bigendian=0,
                            step=W * 3, data=np.ascontiguousarray(data).reshape(-1))
                messages.append((ns + 3_000_000, conn, ts.serialize_cdr(msg, "sensor_msgs/msg/Image")))
        for log_ns, conn, raw in sorted(messages, key=lambda m: m[0]):
            writer.write(conn, log_ns, raw)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_interbotix_bag_converts(tmp_path, storage):
    bag = tmp_path / "bag"
    write_interbotix_bag(bag, storage=storage)
    report = convert_bags([bag], tmp_path / "out", profile="interbotix", task="fold towel")
    assert report.to_dict()["episode_count"] == 1, report.summary()
    ep = read_episode_hdf5(tmp_path / "out" / "episode_0.hdf5")
    # Common span 0 .. 1.0 s, ticks every 40 ms: 26 steps.
    assert len(ep) == 26 and ep.fps == 25.0 and ep.task == "fold towel"
    tick_s = np.arange(26) * 0.04
    # Arm joints: follower (proprio) and leader (action) at the tick's 100 Hz message.
    np.testing.assert_allclose(ep.qpos[:, 0], 0.0 + tick_s, atol=1e-6)
    np.testing.assert_allclose(ep.qpos[:, 7 + 5], -0.5 + 0.05 + tick_s, atol=1e-6)
    np.testing.assert_allclose(ep.action[:, 0], 0.1 + tick_s, atol=1e-6)
    np.testing.assert_allclose(ep.action[:, 7 + 1], -0.4 + 0.01 + tick_s, atol=1e-6)
    # Grippers, by hand with the ALOHA 2 constants: follower finger 0.05 m -> (0.05-0.0440)/(0.0579-0.0440);
    # leader gripper joint 0.4 rad -> (0.4+0.0552)/(0.8298+0.0552). Applied once, not twice.
    np.testing.assert_allclose(ep.qpos[:, [6, 13]], (0.05 - 0.0440) / (0.0579 - 0.0440), atol=1e-6)
    np.testing.assert_allclose(ep.action[:, [6, 13]], (0.4 + 0.0552) / (0.8298 + 0.0552), atol=1e-6)
    # Cameras: nearest frame at each tick; bgr8 cam_high comes out RGB like the others.
    for cam, (_, hz, _) in CAM_TOPICS.items():
        expected = np.stack([frame_rgb(cam, int(round(t * hz))) for t in tick_s])
        np.testing.assert_array_equal(ep.images[cam], expected, err_msg=cam)
    rec = report.episodes[0]
    assert rec.duplicated_frames == 0 and rec.dropped_frames == 0
    assert rec.max_skew_ms < 10.0
    assert rec.rates_hz["/cam_high/camera/color/image_rect_raw"] == pytest.approx(60.0, rel=0.01)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["proprio_min"][0] == pytest.approx(0.0, abs=1e-6)
    assert stats["proprio_max"][0] == pytest.approx(1.0, abs=1e-6)


def test_interbotix_profile_maps_grippers_from_yaml():
    profile = BagProfile.interbotix()
    assert profile.proprio[0].positions == (0, 1, 2, 3, 4, 5, 7)
    assert dict(profile.proprio[0].normalize) == {6: "follower_position"}
    assert dict(profile.action[1].normalize) == {6: "leader_joint"}
    assert profile.gripper().name == "aloha2"


def test_user_profile_path(tmp_path):
    user = tmp_path / "mine.yaml"
    from cosmos_policy_core.data.bag_profile import PROFILE_DIR

    user.write_text((PROFILE_DIR / "interbotix.yaml").read_text().replace("name: interbotix", "name: mine")
                    .replace("gripper_constants: aloha2", "gripper_constants: original_aloha"))
    profile = BagProfile.load(user)
    assert profile.name == "mine" and profile.gripper().name == "original_aloha"


# -- ALOHA HDF5 ------------------------------------------------------------------------------------
def aloha_episode(T: int, H_: int = 24, W_: int = 32) -> Episode:
    t = np.arange(T, dtype=np.float32)[:, None]
    qpos = t * 0.01 + 0.05 * np.arange(14, dtype=np.float32)[None]   # inside the robot's joint ranges
    images = {}
    for c, cam in enumerate(CAMERAS):
        frames = np.zeros((T, H_, W_, 3), np.uint8)
        frames[..., 0] = (np.arange(T) * 4 % 256)[:, None, None]
        frames[..., 1] = 40 * (c + 1)
        frames[..., 2] = 128
        images[cam] = frames
    return Episode(qpos=qpos, action=qpos + 0.1, images=images, fps=50.0, task="insert peg")


def write_plain_aloha_hdf5(path: Path, ep: Episode) -> None:
    """As ALOHA's recorders write it: no fps attribute (50 Hz implied), raw images."""
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = False
        f.create_dataset("observations/qpos", data=ep.qpos)
        f.create_dataset("observations/qvel", data=np.zeros_like(ep.qpos))
        f.create_dataset("action", data=ep.action)
        for cam, frames in ep.images.items():
            f.create_dataset(f"observations/images/{cam}", data=frames)


@pytest.mark.parametrize("form", ["raw_no_fps_attr", "raw", "jpeg"])
def test_hdf5_50hz_to_25hz(tmp_path, form):
    ep = aloha_episode(41)
    src = tmp_path / "in" / "episode_0.hdf5"
    src.parent.mkdir()
    if form == "raw_no_fps_attr":
        write_plain_aloha_hdf5(src, ep)
    else:
        write_episode_hdf5(src, ep, compress=form == "jpeg")
    report = convert_hdf5([tmp_path / "in"], tmp_path / "out", task="insert peg")
    assert report.to_dict()["episode_count"] == 1, report.summary()
    out = read_episode_hdf5(tmp_path / "out" / "episode_0.hdf5")
    keep = np.arange(0, 41, 2)       # the documented rule: every second step starting at 0
    assert len(out) == 21 and out.fps == 25.0
    np.testing.assert_array_equal(out.qpos, ep.qpos[keep])
    np.testing.assert_array_equal(out.action, ep.action[keep])
    for cam in CAMERAS:
        if form == "jpeg":
            err = np.abs(out.images[cam].astype(int) - ep.images[cam][keep].astype(int))
            assert err.mean() < 3.0, (cam, err.mean())
        else:
            np.testing.assert_array_equal(out.images[cam], ep.images[cam][keep])


def test_subsample_rule():
    np.testing.assert_array_equal(resample.subsample_indices(7, 50.0, 25.0), [0, 2, 4, 6])
    np.testing.assert_array_equal(resample.subsample_indices(3, 25.0, 25.0), [0, 1, 2])
    with pytest.raises(DataError):
        resample.subsample_indices(10, 30.0, 25.0)


def test_nearest_tick_rule():
    stamps = np.array([0, 16, 33, 50, 66, 83], dtype=np.int64)
    ticks = resample.tick_times(0, 83, fps=1e9 / 40)  # period 40 (ns)
    np.testing.assert_array_equal(ticks, [0, 40, 80])
    np.testing.assert_array_equal(resample.nearest_indices(stamps, ticks), [0, 2, 5])
    assert resample.duplicated_ticks(np.array([0, 1, 1, 2])) == 1
    assert resample.dropped_messages(np.array([0, 10, 20, 50, 60])) == 2


def test_episode_segments_from_markers():
    events = [(100, {"event": "start", "task": "a"}), (200, {"event": "stop", "success": False}),
              (300, {"event": "start", "task": "b"}), (400, {"event": "stop"}),
              (500, {"event": "start", "task": "c"})]
    segments, warnings = episode_segments(events, 0, 600)
    assert [(s.start_ns, s.stop_ns, s.task, s.success, s.terminated) for s in segments] == [
        (100, 200, "a", False, True), (300, 400, "b", True, True), (500, 600, "c", False, False)]
    assert len(warnings) == 1
    whole, _ = episode_segments([], 5, 9, "t")
    assert [(s.start_ns, s.stop_ns, s.task, s.success) for s in whole] == [(5, 9, "t", True)]


# -- bad input -------------------------------------------------------------------------------------
def test_bad_hdf5_episodes_are_skipped_and_reported(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_episode_hdf5(src / "episode_0.hdf5", aloha_episode(20))
    truncated = src / "episode_1.hdf5"
    write_episode_hdf5(truncated, aloha_episode(20))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    ep = aloha_episode(20)
    write_plain_aloha_hdf5(src / "episode_2.hdf5", ep)
    with h5py.File(src / "episode_2.hdf5", "a") as f:   # one more action than frames
        del f["action"]
        f.create_dataset("action", data=np.zeros((21, 14), np.float32))
    bad_dims = aloha_episode(20)
    write_plain_aloha_hdf5(src / "episode_3.hdf5", bad_dims)
    with h5py.File(src / "episode_3.hdf5", "a") as f:
        del f["observations/qpos"]
        f.create_dataset("observations/qpos", data=np.zeros((20, 7), np.float32))
    write_episode_hdf5(src / "episode_4.hdf5", aloha_episode(20))
    report = convert_hdf5([src], tmp_path / "out")
    d = report.to_dict()
    assert d["episode_count"] == 2 and d["skipped_count"] == 3, report.summary()
    reasons = {Path(s["source"]).name: s["reason"] for s in d["skipped"]}
    assert "episode_1.hdf5" in reasons["episode_1.hdf5"] and "truncated" in reasons["episode_1.hdf5"]
    assert "counts differ" in reasons["episode_2.hdf5"] and "episode_2.hdf5" in reasons["episode_2.hdf5"]
    assert "(20, 7)" in reasons["episode_3.hdf5"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped_count"] == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("episode_*.hdf5")) == ["episode_0.hdf5", "episode_1.hdf5"]
    with pytest.raises(DataError, match="episode_2.hdf5: action and frame counts differ"):
        episode_from_hdf5(src / "episode_2.hdf5")


def test_bad_bags_are_skipped_and_reported(tmp_path):
    good = tmp_path / "good"
    write_interbotix_bag(good, seconds=0.5)
    no_leader = tmp_path / "no_leader"
    write_interbotix_bag(no_leader, seconds=0.5, arms=("follower_left", "follower_right", "leader_left"))
    short_joints = tmp_path / "short_joints"        # 7-entry JointStates: no finger position
    write_interbotix_bag(short_joints, seconds=0.5, finger_entries=7)
    truncated = tmp_path / "truncated"
    write_interbotix_bag(truncated, seconds=0.5)
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    mono = tmp_path / "mono"
    write_interbotix_bag(mono, seconds=0.5, high_encoding="mono8")
    stalled = tmp_path / "stalled"
    write_interbotix_bag(stalled, seconds=0.5, high_gap_s=(0.1, 0.35))
    report = convert_bags([good, no_leader, short_joints, truncated, mono, stalled], tmp_path / "out",
                          profile="interbotix")
    d = report.to_dict()
    assert d["episode_count"] == 1 and d["skipped_count"] == 5, report.summary()
    reasons = {Path(s["source"]).name: s["reason"] for s in d["skipped"]}
    assert "/leader_right/joint_states" in reasons["no_leader"] and "no_leader" in reasons["no_leader"]
    assert "has 7 positions" in reasons["short_joints"]
    assert "truncated" in reasons["truncated"] or "cannot open" in reasons["truncated"]
    assert "'mono8'" in reasons["mono"] and "/cam_high/camera/color/image_rect_raw" in reasons["mono"]
    assert "ms apart" in reasons["stalled"] and "cam_high" in reasons["stalled"]
    assert read_episode_hdf5(tmp_path / "out" / "episode_0.hdf5").qpos.shape == (13, 14)


def test_stats_from_successful_demos_only(tmp_path):
    acc = StatsAccumulator()
    qpos = np.zeros((4, 14), np.float32)
    qpos[:, 0] = [0, 1, 2, 3]
    action = np.ones((4, 14), np.float32)
    action[:, 13] = [4, 4, 8, 0]
    acc.add(qpos, action, success=True)
    acc.add(qpos + 100, action + 100, success=False)     # a failed rollout: excluded
    stats = acc.result()
    assert set(stats) == set(STAT_KEYS) and all(len(v) == 14 for v in stats.values())
    assert stats["proprio_min"][0] == 0 and stats["proprio_max"][0] == 3
    assert stats["proprio_mean"][0] == 1.5 and stats["proprio_median"][0] == 1.5
    assert stats["proprio_std"][0] == pytest.approx(np.sqrt(1.25))
    assert stats["actions_mean"][13] == 4 and stats["actions_median"][13] == 4
    assert stats["actions_std"][13] == pytest.approx(np.sqrt(8.0))
    # A constant dimension gets a small range around its value (normalizes to 0, not a division by zero).
    assert stats["actions_min"][0] == 1 - 1e-3 and stats["actions_max"][0] == 1 + 1e-3 and stats["actions_std"][0] == 0
