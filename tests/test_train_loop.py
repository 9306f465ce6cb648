"""The trainer: loss decreases, resume continues step count / LR / weights, reference .pt init, torchrun (gloo) on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_policy_core.checkpoint import load_checkpoint_dir, to_reference_state_dict
from cosmos_policy_core.data.episode import Episode, write_episode_hdf5
from cosmos_policy_core.errors import CheckpointError
from cosmos_policy_core.nn.dit import CosmosDiT
from cosmos_policy_core.train.config import TrainConfig
from cosmos_policy_core.train.loop import Trainer
from cosmos_policy_core.train.samples import InMemoryEpisode, SampleConfig
from cosmos_policy_core.train.schedule import LRSchedule

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def episode(seed: int, T: int = 40, size: int = 64) -> Episode:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8) for c in CAMS}
    qpos = (np.linspace(0, 1, T)[:, None] * rng.normal(size=(1, 14))).astype(np.float32)
    return Episode(qpos=qpos, action=qpos + 0.1, images=images, task="move", fps=25.0)


def fast_config(**changes) -> TrainConfig:
    # Few distinct clips (stride 20) and a memory latent cache: the VAE encodes each clip once.
    base = replace(TrainConfig.tiny(), augment=None, latent_cache="memory", samples=SampleConfig(step_stride=20),
                   val_episodes=1, eval_samples=2)
    return replace(base, **changes)


def demos(n: int = 3):
    return [InMemoryEpisode(episode(i), f"ep{i}") for i in range(n)]


def test_a_few_steps_on_one_batch_decrease_the_loss(tmp_path):
    cfg = fast_config(lr=2e-3, schedule=LRSchedule((0, 0), (100, 10**12), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)))
    trainer = Trainer(cfg, None, tmp_path, demos=demos(), progress=False)
    # Step 0's batch and noise are fixed by (seed, step): repeated updates on it must fit it.
    losses = [trainer.train_step(0)["loss"] for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses
    assert trainer.encoder.encoded <= 2 * cfg.batch_size  # cached: each clip encoded once


def test_run_writes_checkpoints_metrics_plot_and_resumes_exactly(tmp_path):
    cfg = fast_config(max_steps=4, checkpoint_every=2, log_every=1)
    straight = Trainer(cfg, None, tmp_path / "a", demos=demos(), progress=False).run()
    assert straight.steps == 4 and (tmp_path / "a" / "loss.png").is_file()
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 4
    ckpt = load_checkpoint_dir(straight.final_checkpoint)
    assert ckpt.vae_state is not None and ckpt.stats is not None and "move" in ckpt.text_embeddings
    assert ckpt.metadata["step"] == 4 and ckpt.metadata["data"]["role_shares"]["policy"] == 0.5

    Trainer(cfg, None, tmp_path / "b", demos=demos(), progress=False).run(max_steps=2)
    resumed = Trainer(cfg, None, tmp_path / "b", demos=demos(), progress=False, resume=True)
    assert resumed.step == 2
    result = resumed.run()
    assert result.steps == 4
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]
    assert [r["lr"] for r in result.history] == pytest.approx([r["lr"] for r in straight.history])
    assert [r["loss"] for r in result.history] == pytest.approx([r["loss"] for r in straight.history], rel=1e-5)
    a = load_checkpoint_dir(straight.final_checkpoint).model_state
    b = load_checkpoint_dir(result.final_checkpoint).model_state
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_init_from_reference_pt_really_loads(tmp_path):
    cfg = fast_config()
    torch.manual_seed(123)
    source = CosmosDiT(cfg.model)
    pt = tmp_path / "ref.pt"
    torch.save({"model": {**to_reference_state_dict(source, torch.float32), "net.accum_iteration": torch.tensor(5)}}, pt)
    trainer = Trainer(cfg, None, tmp_path / "run", demos=demos(2), init=pt, progress=False)
    assert trainer.init_report["tensors_loaded"] == len(source.state_dict())
    for k, v in source.state_dict().items():
        assert torch.equal(trainer.net.state_dict()[k], v)
    bad = tmp_path / "bad.pt"
    torch.save({"net.x_embedder.proj.1.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(CheckpointError):
        Trainer(cfg, None, tmp_path / "run2", demos=demos(2), init=bad, progress=False)


def _write_dataset(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_episode_hdf5(root / f"episode_{i}.hdf5", episode(i))
    return root


def _torchrun(tmp_path: Path, nproc: int, steps: int, *extra: str) -> subprocess.CompletedProcess:
    data = _write_dataset(tmp_path / "data")
    cfg = fast_config(max_steps=steps, checkpoint_every=steps, eval_every=0)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cosmos_policy_core.cli.train", "--data", str(data), "--config", str(tmp_path / "cfg.json"),
           "--out", str(tmp_path / "run"), "--no-progress", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_gloo(tmp_path):
    # 5 steps asked, but the time limit is spent after the first: both ranks must stop together (rank 0 decides).
    proc = _torchrun(tmp_path, 2, 5, "--time-limit", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint_dir(tmp_path / "run" / "model")
    assert ckpt.metadata["world_size"] == 2 and ckpt.metadata["step"] == 1
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000001" / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["world_size"] == 2
    assert set(p.name for p in (tmp_path / "run" / "model").iterdir()) >= {
        "config.json", "model.safetensors", "vae.safetensors", "stats.json", "text_embeddings.safetensors"}


def test_time_limit_stops_early_with_a_resumable_checkpoint_and_a_final_model(tmp_path):
    cfg = fast_config(max_steps=1000, checkpoint_every=1000, log_every=1, eval_every=0)
    trainer = Trainer(cfg, None, tmp_path, demos=demos(), progress=False)
    result = trainer.run(time_limit=0.0)  # spent after the first step
    assert result.steps == 1 and result.final_checkpoint is not None
    assert load_checkpoint_dir(result.final_checkpoint).metadata["step"] == 1
    resumed = Trainer(cfg, None, tmp_path, demos=demos(), progress=False, resume=True)
    assert resumed.step == 1


def test_cached_samples_are_built_without_reading_frames(tmp_path):
    class CountingEpisode(InMemoryEpisode):
        reads = 0

        def frame(self, camera, step):
            CountingEpisode.reads += 1
            return super().frame(camera, step)

    cfg = fast_config()
    eps = [CountingEpisode(episode(i), f"ep{i}") for i in range(3)]
    trainer = Trainer(cfg, None, tmp_path, demos=eps, progress=False)
    first = trainer.make_batch(0)
    reads = CountingEpisode.reads
    assert reads > 0
    again = trainer.make_batch(0)  # same keys: every latent is cached now
    assert CountingEpisode.reads == reads
    assert torch.equal(first.x0_B_C_T_H_W, again.x0_B_C_T_H_W)


def test_action_loss_weight_scales_only_the_action_frame_of_the_loss(tmp_path):
    from cosmos_policy_core.errors import ConfigError

    with pytest.raises(ConfigError, match="action_loss_weight"):
        fast_config(action_loss_weight=0.0)
    policy_only = SampleConfig(step_stride=20, demo_prob=1.0)
    plain = Trainer(fast_config(samples=policy_only), None, tmp_path / "a", demos=demos(), progress=False)
    weighted = Trainer(fast_config(samples=policy_only, action_loss_weight=4.0), None, tmp_path / "b",
                       demos=demos(), progress=False)
    batch = plain.make_batch(0)
    assert set(batch.roles) == {"policy"}
    a = plain.layout.index("action")
    base, scaled = plain.loss_mask(batch), weighted.loss_mask(batch)
    assert torch.equal(base, batch.loss_mask_B_T)
    assert torch.equal(scaled[:, a], 4.0 * base[:, a])
    others = [t for t in range(base.shape[1]) if t != a]
    assert torch.equal(scaled[:, others], base[:, others])
    assert torch.equal(batch.loss_mask_B_T, base)  # the batch itself is not modified
    # Same weights, same batch and noise: the weighted policy loss is larger by the action frame's extra share.
    row_plain, row_weighted = plain.train_step(0), weighted.train_step(0)
    assert row_weighted["loss"] > row_plain["loss"]


def test_evaluation_reports_the_blind_mean_chunk_baseline(tmp_path):
    trainer = Trainer(fast_config(eval_samples=2), None, tmp_path, demos=demos(3), progress=False)
    train = trainer.data.train_demos
    assert len(train) == 2  # the third demo is held out
    T, step = len(train[0]), 30  # steps 30..39 exist, 40..79 repeat the last action
    by_hand = np.mean([trainer.data.stats.normalize_actions(
        np.concatenate([ep.action[step:], np.repeat(ep.action[-1:], 50 - (T - step), 0)]).astype(np.float64))
        for ep in train], axis=0)
    np.testing.assert_allclose(trainer.evaluator.mean_chunk(step), by_hand, atol=1e-6)
    result = trainer.evaluate()
    assert result["held_out"] and result["mean_chunk_l1_normalized"] > 0


def test_init_checkpoint_keeps_its_normalization_while_the_demos_fit_in_it(tmp_path, caplog):
    from cosmos_policy_core.checkpoint import write_dataset_stats

    base = Trainer(fast_config(max_steps=1), None, tmp_path / "base", demos=demos(2), progress=False).run()
    kept = load_checkpoint_dir(base.final_checkpoint).stats

    def scaled(i, k):  # episode i with actions and joints shrunk (inside the base range) or grown (outside)
        e = episode(i)
        return InMemoryEpisode(replace(e, qpos=e.qpos * k, action=(e.action - 0.1) * k + 0.1), f"ep{i}")

    inside = Trainer(fast_config(), None, tmp_path / "in", demos=[scaled(0, 0.9), scaled(1, 0.9)],
                     init=base.final_checkpoint, progress=False)
    for name in ("actions_min", "actions_max", "proprio_min", "proprio_max"):
        np.testing.assert_array_equal(getattr(inside.data.stats, name), getattr(kept, name))
    wide = [scaled(0, 1.5), scaled(1, 1.5)]
    with caplog.at_level("WARNING", logger="cosmos_policy_core.train.data"):
        outside = Trainer(fast_config(), None, tmp_path / "out", demos=wide, init=base.final_checkpoint,
                          progress=False)
    assert "exceed the --init checkpoint's statistics" in caplog.text
    np.testing.assert_allclose(outside.data.stats.actions_max, np.concatenate([e.action for e in wide]).max(0))

    data = tmp_path / "data"  # a stats file in the data directory wins over both
    data.mkdir()
    write_dataset_stats(data / "stats.json", outside.data.stats)
    own = Trainer(fast_config(), data, tmp_path / "own", demos=[scaled(0, 0.9)], init=base.final_checkpoint,
                  progress=False)
    np.testing.assert_allclose(own.data.stats.actions_min, outside.data.stats.actions_min)


def test_a_fine_tune_deploys_as_its_init_checkpoint_with_its_own_crop(tmp_path):
    from cosmos_policy_core.checkpoint import DeploySettings, save_checkpoint_dir
    from cosmos_policy_core.train.augment import AugmentConfig

    base = Trainer(fast_config(max_steps=1), None, tmp_path / "base", demos=demos(2), progress=False).run()
    # Without a deploy section in --init, none is written: it is inferred from the recorded training.
    assert load_checkpoint_dir(base.final_checkpoint).deploy is None
    again = Trainer(fast_config(max_steps=1), None, tmp_path / "again", demos=demos(2), init=base.final_checkpoint,
                    progress=False).run()
    assert load_checkpoint_dir(again.final_checkpoint).deploy is None

    ckpt = load_checkpoint_dir(base.final_checkpoint)
    ckpt.deploy = DeploySettings(execution="temporal_ensemble", ensemble_decay=0.02, query_every_steps=5,
                                 num_steps=7, crop_area=0.9)
    save_checkpoint_dir(tmp_path / "deployed", ckpt)
    tuned = Trainer(fast_config(max_steps=1), None, tmp_path / "tuned", demos=demos(2), init=tmp_path / "deployed",
                    progress=False).run()
    deploy = DeploySettings.from_checkpoint(tuned.final_checkpoint)
    assert (deploy.execution, deploy.ensemble_decay, deploy.query_every_steps, deploy.num_steps) == (
        "temporal_ensemble", 0.02, 5, 7)
    assert deploy.crop_area is None                      # this run trained without crop augmentation
    augmented = Trainer(fast_config(augment=AugmentConfig(), latent_cache=None), None, tmp_path / "aug",
                        demos=demos(2), init=tmp_path / "deployed", progress=False)
    assert augmented.deploy_settings().crop_area == DeploySettings().crop_area


def test_several_data_directories_train_on_all_their_episodes(tmp_path, caplog):
    from cosmos_policy_core.checkpoint import DatasetStats, write_dataset_stats
    from cosmos_policy_core.errors import DataError
    from cosmos_policy_core.train.data import TrainingData

    first = _write_dataset(tmp_path / "first", n=2)
    second = tmp_path / "second"
    for i in (5, 6, 7):  # the same file names as in `first`, other episodes
        write_episode_hdf5(second / f"episode_{i - 5}.hdf5", episode(i))
    # A stats file that covers none of the episodes: alone it would be refused, beside another directory unused.
    small = np.full(14, 0.01, np.float32)
    write_dataset_stats(second / "stats.json", DatasetStats(-small, small, -small, small))
    with pytest.raises(DataError, match="does not cover the demos"):
        TrainingData.load(fast_config(), second)
    with caplog.at_level("INFO", logger="cosmos_policy_core.train.data"):
        data = TrainingData.load(fast_config(), [first, second])
    assert len(data.train_demos) + len(data.val_demos) == 5
    assert "stats.json files are not used" in caplog.text
    every = np.concatenate([episode(i).action for i in (0, 1, 5, 6, 7)])
    np.testing.assert_allclose(data.stats.actions_max, every.max(0), rtol=1e-6)
    assert data.recipe()["data_dir"] == [str(first), str(second)]
    with pytest.raises(DataError, match="is given twice"):
        TrainingData.load(fast_config(), [first, tmp_path / "second" / ".." / "first"])

    import cosmos_policy_core.cli as cli

    cfg = fast_config(max_steps=1, checkpoint_every=1, eval_every=0, val_episodes=0)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    rc = cli.main(["train", "--data", str(first), str(tmp_path / "second"), "--config", str(tmp_path / "cfg.json"),
                   "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    recorded = load_checkpoint_dir(tmp_path / "run" / "model").metadata["data"]
    assert recorded["data_dir"] == [str(first), str(tmp_path / "second")] and recorded["train_episodes"] == 5

    failures = tmp_path / "failures"  # rollouts that all failed: nothing for the policy to learn from
    write_episode_hdf5(failures / "episode_0.hdf5", replace(episode(9), success=False))
    with pytest.raises(DataError, match=f"{failures}: no successful demonstration episode"):
        TrainingData.load(fast_config(), [failures])
