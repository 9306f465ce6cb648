"""`cosmos-aloha dataset ...` and `cosmos-aloha record --print-ros2-command` from the command line."""
from __future__ import annotations

import json

import numpy as np

from cosmos_policy_core.cli import main
from cosmos_policy_core.data.episode import CAMERAS, Episode, read_episode_hdf5, write_episode_hdf5
from cosmos_policy_core.data.show import contact_sheet_indices


def _episode(T: int = 30) -> Episode:
    images = {}
    for c, cam in enumerate(CAMERAS):
        frames = np.zeros((T, 24, 32, 3), np.uint8)
        frames[..., c] = 255                      # cam_high red, left wrist green, right wrist blue
        images[cam] = frames
    t = np.arange(T, dtype=np.float32)[:, None]
    return Episode(qpos=0.5 + 0.4 * np.sin(t / 5 + np.arange(14)), action=0.5 + 0.4 * np.cos(t / 5 + np.arange(14)),
                   images=images,
                   fps=50.0, task="pick")


def test_from_hdf5_then_show(tmp_path, capsys):
    write_episode_hdf5(tmp_path / "in" / "episode_0.hdf5", _episode())
    assert main(["dataset", "from-hdf5", str(tmp_path / "in"), "--out", str(tmp_path / "ds")]) == 0
    printed = capsys.readouterr().out
    assert "converted 1 episodes" in printed and "report:" in printed
    assert len(read_episode_hdf5(tmp_path / "ds" / "episode_0.hdf5")) == 15
    tasks = json.loads((tmp_path / "ds" / "tasks.json").read_text())
    assert tasks["tasks"] == ["pick"] and tasks["episodes"][0]["file"] == "episode_0.hdf5"

    png = tmp_path / "sheet.png"
    assert main(["dataset", "show", str(tmp_path / "ds"), "--episode", "0", "--out", str(png),
                 "--columns", "4", "--dpi", "50"]) == 0
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    assert image.shape[0] > 250 and image.shape[1] >= 300
    # The contact sheet shows each camera's colour: pure red, green and blue pixels are present.
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        assert np.any((image[..., channel] > 0.95) & (image[..., others].max(axis=-1) < 0.05)), channel


def test_contact_sheet_indices():
    np.testing.assert_array_equal(contact_sheet_indices(15, 4), [0, 5, 9, 14])
    np.testing.assert_array_equal(contact_sheet_indices(3, 8), [0, 1, 2])


def test_cli_reports_skips_and_fails_without_episodes(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "episode_0.hdf5").write_bytes(b"not hdf5")
    assert main(["dataset", "from-hdf5", str(tmp_path / "in"), "--out", str(tmp_path / "ds")]) == 2
    printed = capsys.readouterr()
    assert "SKIPPED" in printed.out and "episode_0.hdf5" in printed.out
    assert "no input could be converted" in printed.err and not (tmp_path / "ds").exists()
    # A second run into the same directory is refused unless --overwrite.
    write_episode_hdf5(tmp_path / "ok" / "episode_0.hdf5", _episode())
    assert main(["dataset", "from-hdf5", str(tmp_path / "ok"), "--out", str(tmp_path / "ds")]) == 0
    assert main(["dataset", "from-hdf5", str(tmp_path / "ok"), "--out", str(tmp_path / "ds")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_record_prints_the_ros2_bag_command(capsys):
    assert main(["record", "--print-ros2-command", "--out", "demo_bag"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ros2 bag record -s mcap -o demo_bag ")
    for topic in ("/cam_high/image_raw", "/cam_left_wrist/image_raw", "/cam_right_wrist/image_raw",
                  "/joint_states", "/cosmos/joint_command", "/cosmos/episode"):
        assert f" {topic}" in line
