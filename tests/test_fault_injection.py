"""Nothing lost: dataset conversions and training runs killed (SIGKILL) at seeded random file-system steps.

Invariants after every kill: the inputs are unchanged; the output is the old dataset exactly or the new one
complete (statistics equal to those of its episodes); the conversion or the training run can be run again (or
resumed) to the same result, leaving no temporary directory behind; metrics never repeat a step.
The default suite runs a seeded subset; `-m slow` runs every conversion kill point and the training kills.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cosmos_policy_core.data.convert import convert_hdf5
from cosmos_policy_core.data.episode import CAMERAS, Episode, read_episode_hdf5, write_episode_hdf5
from cosmos_policy_core.data.stats import StatsAccumulator
from cosmos_policy_core.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))
import faults  # noqa: E402

TESTS = Path(__file__).resolve().parent


def _episode(seed: int, T: int = 16, success: bool = True, scale: float = 0.3) -> Episode:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, T, dtype=np.float32)[:, None]
    qpos = (0.2 + scale * t * rng.uniform(-1, 1, (1, 14))).astype(np.float32)
    images = {c: rng.integers(0, 255, (T, 12, 16, 3), dtype=np.uint8) for c in CAMERAS}
    return Episode(qpos=qpos, action=qpos + 0.05, images=images, fps=50.0, task="stack", success=success)


def _tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below `root` (hidden temporaries included)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _is_complete_dataset(out: Path) -> bool:
    """The committed report, the episodes it lists, and statistics equal to those of its successful episodes."""
    try:
        return _check_dataset(out)
    except (OSError, ValueError, KeyError, DataError):
        return False


def _check_dataset(out: Path) -> bool:
    report = json.loads((out / "report.json").read_text())
    tasks = json.loads((out / "tasks.json").read_text())
    files = sorted(p.name for p in out.glob("episode_*.hdf5"))
    if not report["committed"] or sorted(e["file"] for e in tasks["episodes"]) != files:
        return False
    if report["episode_count"] != len(files):
        return False
    acc = StatsAccumulator()
    for name in files:
        ep = read_episode_hdf5(out / name)
        acc.add(ep.qpos, ep.action, ep.success)
    return json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(acc.result()))


class ConversionScene:
    """Inputs (good, truncated and out-of-range episodes) and an old dataset in `out`, all in `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.inputs = root / "in"
        self.out = root / "out"
        for i in range(3):
            write_episode_hdf5(self.inputs / f"episode_{i}.hdf5", _episode(i, success=i != 1))
        truncated = self.inputs / "episode_3.hdf5"
        write_episode_hdf5(truncated, _episode(3))
        truncated.write_bytes(truncated.read_bytes()[:3000])
        wild = _episode(4)
        wild.qpos[4, 1] = 1e6       # a joint value no robot reaches (at a step the 25 Hz output keeps)
        write_episode_hdf5(self.inputs / "episode_4.hdf5", wild)
        old = root / "old_in"
        for i in range(2):
            write_episode_hdf5(old / f"episode_{i}.hdf5", _episode(10 + i, scale=0.5))
        convert_hdf5([old], self.out)
        shutil.rmtree(old)

    def convert(self) -> None:
        convert_hdf5([self.inputs], self.out, overwrite=True)

    def copy(self, dest: Path) -> "ConversionScene":
        shutil.copytree(self.root, dest, symlinks=True)
        scene = ConversionScene.__new__(ConversionScene)
        scene.root, scene.inputs, scene.out = dest, dest / "in", dest / "out"
        return scene


def _conversion_kills(tmp_path: Path, points: int | None, seed: int) -> dict:
    pristine = ConversionScene(tmp_path / "pristine")
    reference = pristine.copy(tmp_path / "reference")
    count_file = tmp_path / "count"
    assert faults.run_forked(reference.convert, None, count_file) == 0
    steps = int(count_file.read_text())
    new_digest = _tree_digest(reference.out)
    assert _is_complete_dataset(reference.out) and len(list(reference.out.glob("episode_*.hdf5"))) == 3
    old_digest, input_digest = _tree_digest(pristine.out), _tree_digest(pristine.inputs)
    # A subset: random steps, and the last one (after the swap: the new dataset must be complete).
    kills = range(1, steps + 1) if points is None else [*sorted(
        np.random.default_rng(seed).choice(np.arange(1, steps), size=min(points, steps) - 1, replace=False)), steps]
    result = {"steps": steps, "runs": 0, "kill_points": [], "old": 0, "new": 0, "violations": []}
    for k in kills:
        scene = pristine.copy(tmp_path / f"k{k}")
        status = faults.run_forked(scene.convert, int(k))
        result["runs"] += 1
        result["kill_points"].append(int(k))
        problems = []
        if status != -9:
            problems.append(f"exit status {status}, expected a kill")
        if _tree_digest(scene.inputs) != input_digest:
            problems.append("inputs changed")
        digest = _tree_digest(scene.out)
        if digest == old_digest:
            result["old"] += 1
        elif scene.out.is_dir() and _is_complete_dataset(scene.out):
            result["new"] += 1
        else:
            problems.append(f"output is neither the old nor a complete new dataset: {sorted(digest)}")
        # Run again: the same dataset as an uninterrupted run, and no temporary left beside it.
        if faults.run_forked(scene.convert, None) != 0:
            problems.append("the rerun failed")
        elif _tree_digest(scene.out).keys() != new_digest.keys() or not _is_complete_dataset(scene.out):
            problems.append("the rerun did not produce the complete new dataset")
        leftovers = [p.name for p in scene.root.iterdir() if p.name.startswith(".")]
        if leftovers:
            problems.append(f"temporaries left after the rerun: {leftovers}")
        result["violations"] += [f"kill at step {k}: {p}" for p in problems]
        shutil.rmtree(scene.root)
    return result


def test_killed_conversions_keep_the_old_or_the_new_dataset(tmp_path):
    result = _conversion_kills(tmp_path, points=4, seed=22)
    assert result["violations"] == [], result
    assert result["runs"] == 4 and result["old"] >= 1 and result["new"] >= 1, result


@pytest.mark.slow
def test_conversion_killed_at_every_step(tmp_path):
    result = _conversion_kills(tmp_path, points=None, seed=0)
    print(f"\nconversion: {result['runs']} runs, one per kill point (all {result['steps']} disk steps); "
          f"old dataset kept {result['old']}, new complete {result['new']}, violations {len(result['violations'])}")
    assert result["violations"] == [], result["violations"][:5]


# --- training --------------------------------------------------------------------------------------------
TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import faults
faults.install({kill_at}, {count_file!r})
from cosmos_policy_core.cli import main
sys.exit(main({argv!r}))
"""


def _training_setup(root: Path) -> tuple[list[str], Path]:
    from dataclasses import replace

    from cosmos_policy_core.train.config import TrainConfig
    from cosmos_policy_core.train.samples import SampleConfig

    for i in range(3):
        rng = np.random.default_rng(i)
        T = 24
        qpos = (0.3 * np.linspace(0, 1, T)[:, None] * rng.uniform(-1, 1, (1, 14))).astype(np.float32)
        images = {c: rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8) for c in CAMERAS}
        write_episode_hdf5(root / "data" / f"episode_{i}.hdf5",
                           Episode(qpos=qpos, action=qpos + 0.1, images=images, task="move", fps=25.0))
    cfg = replace(TrainConfig.tiny(), augment=None, latent_cache="memory", samples=SampleConfig(step_stride=12),
                  val_episodes=1, eval_samples=2, max_steps=4, checkpoint_every=1, keep_checkpoints=2,
                  log_every=1, eval_every=0)
    (root / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    return ["train", "--data", str(root / "data"), "--config", str(root / "cfg.json"), "--no-progress"], root


def _train(argv: list[str], kill_at: int | None = None, count_file: Path | None = None) -> subprocess.CompletedProcess:
    script = TRAIN_SCRIPT.format(tests=str(TESTS), kill_at=kill_at, count_file=None if count_file is None
                                 else str(count_file), argv=argv)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)


def _weights(model_dir: Path) -> dict:
    from cosmos_policy_core.checkpoint import load_checkpoint_dir

    return load_checkpoint_dir(model_dir, load_vae=False).model_state


@pytest.mark.slow
def test_training_killed_at_random_steps_resumes_to_the_same_model(tmp_path):
    argv, root = _training_setup(tmp_path)
    straight = _train([*argv, "--out", str(root / "straight")], count_file=root / "count")
    assert straight.returncode == 0, straight.stderr[-3000:]
    steps = int((root / "count").read_text())
    reference = _weights(root / "straight" / "model")
    reference_rows = [json.loads(line) for line in (root / "straight" / "metrics.jsonl").read_text().splitlines()]
    kills = sorted(np.random.default_rng(22).choice(np.arange(1, steps + 1), size=8, replace=False))
    violations = []
    for k in kills:
        out = root / f"k{k}"
        killed = _train([*argv, "--out", str(out)], kill_at=int(k))
        if killed.returncode != -9:
            violations.append(f"kill at {k}: exit {killed.returncode}")
            continue
        resumed = _train([*argv, "--out", str(out), "--resume"])
        if resumed.returncode != 0:
            violations.append(f"kill at {k}: resume failed: {resumed.stderr[-500:]}")
            continue
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if [r["step"] for r in rows] != [r["step"] for r in reference_rows]:
            violations.append(f"kill at {k}: metrics steps {[r['step'] for r in rows]}")
        if not np.allclose([r["loss"] for r in rows], [r["loss"] for r in reference_rows], rtol=1e-4):
            violations.append(f"kill at {k}: losses differ from the uninterrupted run")
        weights = _weights(out / "model")
        if max(float((weights[n] - reference[n]).abs().max()) for n in reference) > 1e-5:
            violations.append(f"kill at {k}: final weights differ from the uninterrupted run")
        leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
        if leftovers:
            violations.append(f"kill at {k}: temporaries left after the resume: {leftovers}")
    print(f"\ntraining: {len(kills)} killed runs + {len(kills)} resumes, kill points {[int(k) for k in kills]} "
          f"of {steps} disk steps; violations {len(violations)}")
    assert violations == [], violations


# --- training checkpoints, in process ----------------------------------------------------------------------
def _trainer(run_dir: Path, resume: bool = False):
    from dataclasses import replace

    from cosmos_policy_core.train.config import TrainConfig
    from cosmos_policy_core.train.loop import Trainer
    from cosmos_policy_core.train.samples import InMemoryEpisode, SampleConfig

    cfg = replace(TrainConfig.tiny(), augment=None, latent_cache="memory", samples=SampleConfig(step_stride=12),
                  val_episodes=1, eval_samples=2, max_steps=4, checkpoint_every=2, keep_checkpoints=2,
                  log_every=1, eval_every=0)
    rng = np.random.default_rng(0)
    demos = []
    for i in range(3):
        T = 24
        qpos = (0.3 * np.linspace(0, 1, T)[:, None] * rng.uniform(-1, 1, (1, 14))).astype(np.float32)
        images = {c: rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8) for c in CAMERAS}
        demos.append(InMemoryEpisode(Episode(qpos=qpos, action=qpos + 0.1, images=images, task="move"), f"ep{i}"))
    return Trainer(cfg, None, run_dir, demos=demos, progress=False, resume=resume)


def test_resume_passes_over_damaged_checkpoints_and_metrics_never_repeat(tmp_path, caplog, monkeypatch):
    from cosmos_policy_core.errors import CheckpointError
    from cosmos_policy_core.train.checkpoints import OPTIMIZER_STATE, TRAINER_STATE, RunCheckpoints

    monkeypatch.setattr("cosmos_policy_core.train.loop.plot_history", lambda *a: None)  # loss.png: tested elsewhere
    run = tmp_path / "run"
    straight = _trainer(run).run()
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000002", "step_00000004"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    # A checkpoint truncated after it was written: the resume says so and takes the one before.
    optimizer = ckpts / "step_00000004" / OPTIMIZER_STATE
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    (ckpts / ".step_00000006.tmp-999999").mkdir()          # left by a writer that was killed
    with caplog.at_level("WARNING", logger="cosmos_policy_core.train.checkpoints"):
        resumed = _trainer(run, resume=True)
    assert resumed.resumed_from == ckpts / "step_00000002" and resumed.step == 2
    assert "step_00000004" in caplog.text and "truncated" in caplog.text
    assert not (ckpts / ".step_00000006.tmp-999999").exists()
    result = resumed.run()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]     # rows 3 and 4 of the first run were not kept twice
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in straight.history], rel=1e-5)
    checkpoints = RunCheckpoints(run, keep=2)
    assert result.steps == 4 and checkpoints.load_newest().path == ckpts / "step_00000004"

    # Damaged trainer state (not JSON) in the newest, then every checkpoint damaged: one message naming each.
    (ckpts / "step_00000004" / TRAINER_STATE).write_text('{"step": 4, "optim')
    assert checkpoints.load_newest().path == ckpts / "step_00000002"
    (ckpts / "step_00000002" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be resumed from") as err:
        checkpoints.load_newest()
    assert "step_00000002" in str(err.value) and "step_00000004" in str(err.value)
