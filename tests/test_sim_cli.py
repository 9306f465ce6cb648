"""`cosmos-aloha sim demos`: writes readable episodes and a report, skips failed seeds, validates input."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cosmos_policy_core.sim  # noqa: F401  (selects MUJOCO_GL=egl before mujoco is imported)

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")
h5py = pytest.importorskip("h5py")

from cosmos_policy_core.cli import main  # noqa: E402
from cosmos_policy_core.data.episode import CAMERAS, Episode, read_episode_hdf5  # noqa: E402
from cosmos_policy_core.sim import demos  # noqa: E402
from cosmos_policy_core.sim.tasks import get_task  # noqa: E402


def test_demos_command_writes_a_readable_episode_and_report(tmp_path, capsys):
    rc = main(["sim", "demos", "--task", "transfer_cube", "--episodes", "1", "--out", str(tmp_path),
               "--height", "32", "--width", "48"])
    assert rc == 0
    ep = read_episode_hdf5(tmp_path / "episode_0.hdf5")
    assert sorted(ep.images) == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert ep.images["cam_left_wrist"].shape == (200, 32, 48, 3)
    assert ep.images["cam_high"].std() > 5                      # JPEG round trip kept a real picture
    assert ep.qpos.shape == ep.action.shape == (200, 14)
    assert ep.fps == 25 and ep.sim and ep.success
    assert ep.task == get_task("transfer_cube").description
    assert ep.attrs["seed"] == 0
    with h5py.File(tmp_path / "episode_0.hdf5", "r") as f:
        assert bool(f.attrs["compress"]) and "compress_len" in f   # JPEG frames by default (--raw: arrays)
    report = json.loads((tmp_path / "demos_report.json").read_text())
    assert report["attempted"] == 1 and report["kept"] == 1 and report["success_rate"] == 1.0
    assert report["per_seed"][0]["file"] == "episode_0.hdf5"
    assert "kept 1 of 1" in capsys.readouterr().out


def _fake_demo(succeed):
    """A stand-in for run_scripted_demo: a 3-step episode, success decided by `succeed(seed)`."""

    def run(task, seed, ee_env, env, plan_error=None):
        ep = Episode(qpos=np.zeros((3, 14)), action=np.zeros((3, 14)),
                     images={cam: np.full((3, 8, 8, 3), seed, np.uint8) for cam in CAMERAS},
                     fps=25.0, task="t", sim=True, attrs={"seed": seed})
        ok = succeed(seed)
        return demos.DemoResult(seed, ok, 4 if ok else 2, 4 if ok else 0, 4, ep if ok else None)

    return run


def test_failed_seeds_are_skipped_and_reported(tmp_path, monkeypatch, capsys):
    """Seeds that fail in the joint-space sim are not written; the report names them."""
    monkeypatch.setattr(demos, "run_scripted_demo", _fake_demo(lambda seed: seed % 2 == 0))
    rc = main(["sim", "demos", "--episodes", "2", "--out", str(tmp_path), "--seed", "4", "--max-attempts", "3",
               "--height", "8", "--width", "8"])
    assert rc == 0
    report = json.loads((tmp_path / "demos_report.json").read_text())
    assert [e["seed"] for e in report["per_seed"]] == [4, 5, 6]
    assert [e["success"] for e in report["per_seed"]] == [True, False, True]
    assert report["kept"] == 2 and report["success_rate"] == pytest.approx(2 / 3)
    assert sorted(p.name for p in tmp_path.glob("*.hdf5")) == ["episode_0.hdf5", "episode_1.hdf5"]
    assert read_episode_hdf5(tmp_path / "episode_1.hdf5").attrs["seed"] == 6
    assert "failed seeds: [5]" in capsys.readouterr().out


def test_too_few_successes_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demos, "run_scripted_demo", _fake_demo(lambda seed: False))
    rc = main(["sim", "demos", "--episodes", "1", "--out", str(tmp_path), "--max-attempts", "2",
               "--height", "8", "--width", "8"])
    assert rc == 1
    assert not list(tmp_path.glob("*.hdf5"))
    report = json.loads((tmp_path / "demos_report.json").read_text())
    assert report["kept"] == 0 and report["attempted"] == 2
    assert "only 0 of 1" in capsys.readouterr().out


def test_bad_arguments(tmp_path, capsys):
    assert main(["sim", "demos", "--episodes", "0", "--out", str(tmp_path)]) == 2
    assert "--episodes must be positive" in capsys.readouterr().err
    assert main(["sim"]) == 2
    with pytest.raises(SystemExit):
        main(["sim", "demos", "--task", "stack_blocks", "--out", str(tmp_path)])
