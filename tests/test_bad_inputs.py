"""Bad files and arguments through the command line: one message naming the file and what is wrong, exit code 2
(bad input), no traceback, and nothing lost (inputs and an existing dataset stay as they were).

Each row of the table builds its bad input in a fresh directory, runs `cosmos-aloha ...` in process and checks the
exit code, the words of the message and what is left on disk.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from cosmos_policy_core.cli import main
from cosmos_policy_core.data.episode import CAMERAS, Episode, write_episode_hdf5

sys.path.insert(0, str(Path(__file__).parent))
from test_data_convert import write_interbotix_bag  # noqa: E402


def _episode(seed: int = 0, T: int = 20) -> Episode:
    rng = np.random.default_rng(seed)
    qpos = (0.2 + 0.3 * np.linspace(0, 1, T, dtype=np.float32)[:, None] * rng.uniform(-1, 1, (1, 14)))
    images = {c: rng.integers(0, 255, (T, 12, 16, 3), dtype=np.uint8) for c in CAMERAS}
    return Episode(qpos=qpos.astype(np.float32), action=(qpos + 0.05).astype(np.float32), images=images, fps=50.0,
                   task="stack")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from cosmos_policy_core.testing import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", image_size=64, text_len=16)


class Case:
    """A directory to build the bad input in, and what `setup` left there to check afterwards."""

    def __init__(self, root: Path, checkpoint: Path):
        self.root, self.source_checkpoint = root, checkpoint
        self.unchanged: dict[Path, dict] = {}

    def keep(self, path: Path) -> Path:
        """`path` must be byte for byte the same after the command."""
        self.unchanged[path] = _digest(path) if path.is_dir() else {"": hashlib.sha256(path.read_bytes()).hexdigest()}
        return path

    def dataset(self, name: str = "ds") -> Path:
        src = self.root / f"{name}_src"
        for i in range(2):
            write_episode_hdf5(src / f"episode_{i}.hdf5", _episode(i))
        assert main(["dataset", "from-hdf5", str(src), "--out", str(self.root / name)]) == 0
        return self.root / name

    def hdf5(self, edit=None, episode: Episode | None = None) -> Path:
        path = self.root / "in" / "episode_0.hdf5"
        write_episode_hdf5(path, episode or _episode())
        if edit is not None:
            with h5py.File(path, "a") as f:
                edit(f)
        return self.keep(path.parent)

    def checkpoint(self, edit=None) -> Path:
        ckpt = self.root / "ckpt"
        shutil.copytree(self.source_checkpoint, ckpt)
        if edit is not None:
            edit(ckpt)
        return ckpt

    def act(self, ckpt: Path, proprio=None) -> list[str]:
        img = self.root / "a.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
        (self.root / "p.json").write_text(json.dumps(proprio if proprio is not None else [0.1] * 14))
        return ["act", "--checkpoint", str(ckpt), "--images", str(img), str(img), str(img), "--proprio",
                str(self.root / "p.json"), "--task", "fold shirt", "--steps", "1", "--no-images"]

    def train(self, data: Path, *extra: str) -> list[str]:
        return ["train", "--data", str(data), "--config", "tiny", "--out", str(self.root / "run"), "--steps", "1",
                "--no-progress", *extra]


def _replace_dataset(f, key, data):
    del f[key]
    f.create_dataset(key, data=data)


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _stats_value(key: str, dim: int, value):
    def edit(ckpt: Path):
        text = (ckpt / "stats.json").read_text()
        data = json.loads(text)
        data[key][dim] = value
        (ckpt / "stats.json").write_text(json.dumps(data))   # json writes NaN / Infinity as JavaScript does
    return edit


def _truncate(name: str, keep: int = 100):
    def edit(ckpt: Path):
        path = ckpt / name
        path.write_bytes(path.read_bytes()[:keep])
    return edit


def _bag(c: Case, **kwargs) -> Path:
    bag = c.root / "bags" / "bag"
    write_interbotix_bag(bag, seconds=0.3, **kwargs)
    return bag


def _truncated_mcap(c: Case) -> Path:
    bag = _bag(c)
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    return c.keep(bag)


def _data_with_stats(c: Case, stats_edit) -> Path:
    data = c.root / "data"
    for i in range(2):
        write_episode_hdf5(data / f"episode_{i}.hdf5", _episode(i))
    from cosmos_policy_core.checkpoint import DatasetStats, write_dataset_stats

    eps = [_episode(i) for i in range(2)]
    stats = DatasetStats.from_arrays(np.concatenate([e.action for e in eps]), np.concatenate([e.qpos for e in eps]))
    write_dataset_stats(data / "stats.json", stats)
    stats_edit(data / "stats.json")
    return c.keep(data)


def _nan_in(key):
    return lambda path: _edit_json(path, lambda d: d[key].__setitem__(3, float("nan")))


# name -> (setup(case) -> argv, exit code, words the message must hold, where it is printed)
CASES = {
    # -- dataset conversion -------------------------------------------------------------------------------
    "output is the input": (
        lambda c: ["dataset", "from-hdf5", str(c.keep(c.dataset())), "--out", str(c.root / "ds"), "--overwrite"],
        2, ["--out", "is the input", "choose a directory outside the inputs"], "err"),
    "output inside the input": (
        lambda c: ["dataset", "from-hdf5", str(c.hdf5()), "--out", str(c.root / "in" / "ds")],
        2, ["is inside the input", "in/ds"], "err"),
    "input inside the output": (
        lambda c: ["dataset", "from-hdf5", str(c.keep(c.dataset()) / "episode_0.hdf5"), "--out", str(c.root / "ds"),
                   "--overwrite"],
        2, ["lies inside --out"], "err"),
    "overwrite with only bad input": (
        lambda c: (c.keep(c.dataset()), (c.root / "bad").mkdir(), (c.root / "bad" / "episode_0.hdf5").write_text("x"),
                   ["dataset", "from-hdf5", str(c.root / "bad"), "--out", str(c.root / "ds"), "--overwrite"])[-1],
        2, ["no input could be converted", "left as it was"], "err"),
    "output holds other files": (
        lambda c: (c.keep(_write(c.root / "home" / "notes.txt", "mine")),
                   ["dataset", "from-hdf5", str(c.hdf5()), "--out", str(c.root / "home"), "--overwrite"])[-1],
        2, ["notes.txt", "not dataset files"], "err"),
    "input does not exist": (
        lambda c: ["dataset", "from-hdf5", str(c.root / "nowhere"), "--out", str(c.root / "ds")],
        2, ["input", "nowhere", "does not exist"], "err"),
    "HDF5 with a wrong action width": (
        lambda c: ["dataset", "from-hdf5", str(c.hdf5(lambda f: _replace_dataset(f, "action", np.zeros((20, 7))))),
                   "--out", str(c.root / "ds")],
        2, ["SKIPPED", "episode_0.hdf5", "/action has shape (20, 7), expected (T, 14)"], "out"),
    "HDF5 with joint values of 1e6": (
        lambda c: ["dataset", "from-hdf5", str(c.hdf5(lambda f: f["observations/qpos"].__setitem__((4, 1), 1e6))),
                   "--out", str(c.root / "ds")],
        2, ["SKIPPED", "episode_0.hdf5", "left_shoulder is 1e+06 at step 2", "beyond the robot's range"], "out"),
    "HDF5 with NaN joints": (
        lambda c: ["dataset", "from-hdf5", str(c.hdf5(lambda f: f["action"].__setitem__((0, 3), np.nan))),
                   "--out", str(c.root / "ds")],
        2, ["SKIPPED", "episode_0.hdf5", "NaN or Inf"], "out"),
    "HDF5 with float frames": (
        lambda c: ["dataset", "from-hdf5", str(c.hdf5(lambda f: _replace_dataset(
            f, "observations/images/cam_high", np.zeros((20, 12, 16, 3), np.float32)))), "--out", str(c.root / "ds")],
        2, ["SKIPPED", "camera cam_high holds float32 values, expected uint8"], "out"),
    "HDF5 with a rate that is not a number": (
        lambda c: ["dataset", "from-hdf5", str(c.hdf5(lambda f: f.attrs.__setitem__("fps", "fast"))),
                   "--out", str(c.root / "ds")],
        2, ["SKIPPED", "attrs['fps'] is 'fast'"], "out"),
    "truncated HDF5": (
        lambda c: ["dataset", "from-hdf5", str(_truncated_hdf5(c)), "--out", str(c.root / "ds")],
        2, ["SKIPPED", "episode_0.hdf5", "truncated or corrupt"], "out"),
    "truncated MCAP": (
        lambda c: ["dataset", "from-bags", str(_truncated_mcap(c)), "--out", str(c.root / "ds"), "--profile",
                   "interbotix"],
        2, ["SKIPPED", "bag: cannot open bag", "truncated or corrupt"], "out"),
    "bag missing a camera topic": (
        lambda c: ["dataset", "from-bags", str(c.keep(_bag(c, cameras=("cam_left_wrist", "cam_right_wrist")))),
                   "--out", str(c.root / "ds"), "--profile", "interbotix"],
        2, ["SKIPPED", "bag has no topic /cam_high/camera/color/image_rect_raw (cameras)"], "out"),
    # -- checkpoints and statistics (act) -----------------------------------------------------------------
    "stats.json with NaN": (
        lambda c: c.act(c.checkpoint(_stats_value("actions_min", 2, float("nan")))),
        2, ["ckpt/stats.json", "actions_min holds NaN or Infinity in dims [2]"], "err"),
    "stats.json with Infinity": (
        lambda c: c.act(c.checkpoint(_stats_value("proprio_max", 5, float("inf")))),
        2, ["ckpt/stats.json", "proprio_max holds NaN or Infinity in dims [5]"], "err"),
    "stats.json with max below min": (
        lambda c: c.act(c.checkpoint(_stats_value("actions_max", 0, -5.0))),
        2, ["ckpt/stats.json", "actions_max is not above actions_min in dims [0]"], "err"),
    "stats.json not JSON": (
        lambda c: c.act(c.checkpoint(_truncate("stats.json", 30))),
        2, ["statistics file", "stats.json is not valid JSON"], "err"),
    "config.json metadata not an object": (
        lambda c: c.act(c.checkpoint(lambda p: _edit_json(p / "config.json", lambda d: d.update(metadata="oops")))),
        2, ["config.json", '"metadata" holds "oops"', "expected a JSON object"], "err"),
    "config.json not JSON": (
        lambda c: c.act(c.checkpoint(_truncate("config.json", 50))),
        2, ["config.json is not valid JSON"], "err"),
    "config.json without the model": (
        lambda c: c.act(c.checkpoint(lambda p: _edit_json(p / "config.json", lambda d: d.pop("model")))),
        2, ["config.json lacks the 'model' section"], "err"),
    "checkpoint path is a file": (
        lambda c: c.act(c.checkpoint() / "model.safetensors"),
        2, ["model.safetensors is a file; a checkpoint is a directory"], "err"),
    "checkpoint does not exist": (
        lambda c: c.act(c.root / "nowhere"),
        2, ["checkpoint directory", "nowhere does not exist"], "err"),
    "truncated model.safetensors": (
        lambda c: c.act(c.checkpoint(_truncate("model.safetensors"))),
        2, ["model.safetensors is truncated or corrupt"], "err"),
    "truncated text embeddings": (
        lambda c: c.act(c.checkpoint(_truncate("text_embeddings.safetensors"))),
        2, ["text_embeddings.safetensors is truncated or corrupt"], "err"),
    "proprio with NaN": (
        lambda c: c.act(c.checkpoint(), proprio=[0.1] * 13 + [float("nan")]),
        2, ["p.json", "NaN"], "err"),
    "proprio of 7 joints": (
        lambda c: c.act(c.checkpoint(), proprio=[0.1] * 7),
        2, ["7", "14"], "err"),
    # -- training -----------------------------------------------------------------------------------------
    "train config not JSON": (
        lambda c: (_write(c.root / "cfg.json", "{oops"), c.train(c.hdf5(), "--config", str(c.root / "cfg.json")))[-1],
        2, ["cfg.json is not valid JSON"], "err"),
    "train config a list": (
        lambda c: (_write(c.root / "cfg.json", "[1, 2]"),
                   c.train(c.hdf5(), "--config", str(c.root / "cfg.json")))[-1],
        2, ["cfg.json holds a list", "expected a JSON object"], "err"),
    "train config with a wrong type": (
        lambda c: (_write(c.root / "cfg.json", '{"model": "oops"}'),
                   c.train(c.hdf5(), "--config", str(c.root / "cfg.json")))[-1],
        2, ["cfg.json", '"model" holds "oops", expected a JSON object'], "err"),
    "train data does not exist": (
        lambda c: c.train(c.root / "nowhere"),
        2, ["dataset directory", "nowhere does not exist"], "err"),
    "train data with a truncated episode": (
        lambda c: c.train(_truncated_hdf5(c).parent),
        2, ["episode_0.hdf5", "truncated or corrupt"], "err"),
    "train data with NaN statistics": (
        lambda c: c.train(_data_with_stats(c, _nan_in("actions_max"))),
        2, ["data/stats.json", "actions_max holds NaN or Infinity in dims [3]"], "err"),
    "train data with statistics of other episodes": (
        lambda c: c.train(_data_with_stats(c, lambda p: _edit_json(p, lambda d: d.update(
            actions_max=[v - 0.5 * (v - lo) for v, lo in zip(d["actions_max"], d["actions_min"])])))),
        2, ["data/stats.json does not cover the demos", "actions dims", "delete it"], "err"),
    "train --init checkpoint with a bad config": (
        lambda c: c.train(_data_with_stats(c, lambda p: None), "--init", str(c.checkpoint(
            lambda p: _edit_json(p / "config.json", lambda d: d.update(metadata=[1]))))),
        2, ["config.json", '"metadata" holds [1]'], "err"),
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _truncated_hdf5(c: Case) -> Path:
    path = c.root / "in" / "episode_0.hdf5"
    write_episode_hdf5(path, _episode())
    path.write_bytes(path.read_bytes()[:3000])
    c.keep(path.parent)
    return path.parent


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, checkpoint, capsys):
    setup, code, words, stream = CASES[name]
    case = Case(tmp_path, checkpoint)
    argv = setup(case)
    capsys.readouterr()
    rc = main(argv)
    printed = capsys.readouterr()
    text = printed.out if stream == "out" else printed.err
    assert rc == code, (rc, printed.out[-2000:], printed.err[-2000:])
    for word in words:
        assert word in text, (word, text[-2000:])
    assert "Traceback" not in printed.err
    for path, digest in case.unchanged.items():
        now = _digest(path) if path.is_dir() else {"": hashlib.sha256(path.read_bytes()).hexdigest()}
        assert now == digest, f"{path} changed"


def test_the_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "2  bad usage or bad input" in text and "1  a failure while running" in text
    with pytest.raises(SystemExit):
        main(["dataset", "from-hdf5", "--help"])
    assert "2 bad usage or bad input" in capsys.readouterr().out
