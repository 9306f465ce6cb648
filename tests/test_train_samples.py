"""Sample builder, epoch composition, value targets, LR schedule and augmentation against hand-computed numbers."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from cosmos_policy_core.checkpoint import DatasetStats
from cosmos_policy_core.data.episode import Episode
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.layout import LatentLayout
from cosmos_policy_core.train.augment import (
    AugmentParams, adjust_brightness, adjust_contrast, apply_params, augment_sample_images, crop_side, sample_params,
)
from cosmos_policy_core.train.samples import (
    InMemoryEpisode, SampleBuilder, SampleConfig, action_chunk_with_padding, epoch_structure, future_index,
    value_targets,
)
from cosmos_policy_core.train.schedule import LRSchedule

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def make_episode(seed: int, T: int = 60, size: int = 64, success: bool = True, task: str = "t") -> InMemoryEpisode:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8) for c in CAMS}
    qpos = (np.arange(T)[:, None] * 0.01 + rng.normal(size=(1, 14))).astype(np.float32)
    return InMemoryEpisode(Episode(qpos=qpos, action=qpos + 0.5, images=images, task=task, success=success),
                           f"ep{seed}")


def stats_of(episodes) -> DatasetStats:
    return DatasetStats.from_arrays(np.concatenate([e.action for e in episodes]),
                                    np.concatenate([e.qpos for e in episodes]))


# --- value targets, padding, future index ------------------------------------------------------------
def test_value_targets_match_hand_computed_returns():
    v = value_targets(4, success=True, gamma=0.998)
    assert v == pytest.approx([2 * 0.998**3 - 1, 2 * 0.998**2 - 1, 2 * 0.998 - 1, 1.0])
    assert value_targets(3, success=False).tolist() == [-1.0, -1.0, -1.0]
    # 200-step success: target of step 0 is 2·0.998^199 − 1 ≈ 0.3419
    assert value_targets(200, True)[0] == pytest.approx(2 * 0.998**199 - 1) and abs(value_targets(200, True)[0] - 0.3419) < 1e-3


def test_future_index_and_action_padding():
    assert future_index(10, 200, 50) == 60
    assert future_index(170, 200, 50) == 199
    actions = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    chunk = action_chunk_with_padding(actions, 7, 5)
    assert chunk.tolist() == [[14, 15], [16, 17], [18, 19], [18, 19], [18, 19]]
    assert np.array_equal(action_chunk_with_padding(actions, 0, 5), actions[:5])


def test_sample_uses_future_frame_value_and_padded_chunk():
    ep = make_episode(0, T=60)
    layout = replace(LatentLayout.aloha(), image_size=64)
    builder = SampleBuilder(layout, stats_of([ep]), [ep])
    spec = builder.spec_for_slot(30, np.random.default_rng(0))   # demo block: step 30, policy
    assert (spec.source, spec.role, spec.step) == ("demo", "policy", 30)
    s = builder.build(spec)
    assert s.value == pytest.approx(2 * 0.998 ** (59 - 59) - 1)  # future = min(80, 59) = 59 -> 1.0
    assert np.array_equal(s.future["top"], ep.frame("cam_high", 59))
    assert np.array_equal(s.current["left_wrist"], ep.frame("cam_left_wrist", 30))
    raw = builder.stats.unnormalize_actions(s.actions.astype(np.float64))
    assert np.allclose(raw[29], ep.action[59], atol=1e-5) and np.allclose(raw[49], ep.action[59], atol=1e-5)
    s5 = builder.build(builder.spec_for_slot(5, np.random.default_rng(0)))
    assert s5.value == pytest.approx(2 * 0.998 ** (59 - 55) - 1)


# --- batch composition -------------------------------------------------------------------------------
def test_epoch_structure_demos_as_successes_is_half_policy():
    s = epoch_structure(1000, 1000, 0, demo_prob=0.5, success_prob=0.5)
    assert (s.demo, s.success_rollout, s.failure_rollout) == (1000, 1000, 0)


def test_epoch_structure_planning_mixture_hand_computed():
    # demos 1000, successes 300, failures 900, demo 0.1, success 0.5:
    # s_new = int(900·0.5/0.5) = 900 > 300 -> (900, 900); d_new = int(1800·0.1/0.9) = 200 < 1000 ->
    # demos 1000, r_new = int(1000·0.9/0.1) = 9000 -> 4500 / 4500.
    s = epoch_structure(1000, 300, 900, demo_prob=0.1, success_prob=0.5)
    assert (s.demo, s.success_rollout, s.failure_rollout) == (1000, 4500, 4500)
    # Few demos: d_new = int(1800·0.1/0.9) = 200 > 100 -> demos up-sampled to 200.
    s = epoch_structure(100, 300, 900, demo_prob=0.1, success_prob=0.5)
    assert (s.demo, s.success_rollout, s.failure_rollout) == (200, 900, 900)
    assert epoch_structure(10, 0, 0).length == 10


def test_batch_composition_proportions_over_an_epoch():
    eps = [make_episode(i, T=40, size=8) for i in range(3)]
    layout = LatentLayout.aloha()
    builder = SampleBuilder(layout, stats_of(eps), eps, seed=3)
    L = len(builder)
    assert L == 2 * 120
    roles = [builder.spec_at(p).role for p in range(L)]
    counts = {r: roles.count(r) for r in set(roles)}
    assert counts["policy"] == 120                               # exactly half: the demo block
    assert counts["world_model"] + counts["value_v_sas"] == 120
    assert abs(counts["world_model"] - 60) < 25                  # each rollout slot is a fair coin
    # Every slot of the epoch is visited exactly once: each (source, episode, step) twice over both blocks.
    keys = [(s.source, s.episode, s.step) for s in (builder.spec_at(p) for p in range(L))]
    assert len(set(keys)) == L
    assert builder.role_counts() == {"policy": 0.5, "world_model": 0.25, "value_v_sas": 0.25}


def test_failure_rollouts_get_minus_one_and_world_model_or_value_roles():
    demos = [make_episode(0, T=30, size=8)]
    fail = make_episode(1, T=30, size=8, success=False)
    builder = SampleBuilder(LatentLayout.aloha(), stats_of(demos), demos, [fail],
                            SampleConfig(treat_demos_as_success_rollouts=False))
    s = builder.structure
    assert (s.demo, s.success_rollout, s.failure_rollout) == (30, 0, 30)
    spec = builder.spec_for_slot(45, np.random.default_rng(0))
    assert spec.source == "failure_rollout" and spec.role in ("world_model", "value_v_sas")
    assert builder.build(spec).value == -1.0


def test_step_stride_subsamples_steps():
    eps = [make_episode(0, T=25, size=8)]
    b = SampleBuilder(LatentLayout.aloha(), stats_of(eps), eps, config=SampleConfig(step_stride=10))
    assert b.structure.demo == 3
    assert [b.spec_for_slot(i, np.random.default_rng(0)).step for i in range(3)] == [0, 10, 20]


def test_first_steps_prob_moves_that_share_of_demo_samples_to_the_first_steps():
    eps = [make_episode(0, T=100, size=8), make_episode(1, T=60, size=8)]   # 10 and 6 steps at stride 10
    cfg = SampleConfig(step_stride=10, first_steps_prob=0.25, first_steps=2)
    b = SampleBuilder(LatentLayout.aloha(), stats_of(eps), eps, config=cfg)
    plain = SampleBuilder(LatentLayout.aloha(), stats_of(eps), eps, config=replace(cfg, first_steps_prob=0.0))
    n = 4000
    pairs = [(b.spec_at(p), plain.spec_at(p)) for p in range(n)]
    # Only the step of a demo (policy) sample moves, to step 0 or 10; rollout samples are untouched.
    assert all(s.source == o.source and s.episode == o.episode and s.role == o.role for s, o in pairs)
    assert all(s == o for s, o in pairs if s.source != "demo")
    demo = [(s, o) for s, o in pairs if s.source == "demo"]
    assert all(s.step in (0, 10) for s, o in demo if s.step != o.step)
    # P(step 0 or 10) of a demo sample: 0.25 + 0.75 * (2 + 2) / 16 against (2 + 2) / 16 without the option.
    assert np.mean([s.step < 20 for s, _ in demo]) == pytest.approx(0.25 + 0.75 * 4 / 16, abs=0.025)
    assert np.mean([o.step < 20 for _, o in demo]) == pytest.approx(4 / 16, abs=0.02)
    # The stream is still a function of the position alone.
    assert [b.spec_at(p) for p in (7, 3999, 12)] == [pairs[7][0], pairs[3999][0], pairs[12][0]]
    with pytest.raises(ConfigError):
        SampleConfig(first_steps_prob=1.5)
    with pytest.raises(ConfigError):
        SampleConfig(first_steps=0)


# --- LR schedule -----------------------------------------------------------------------------------
def test_reference_lr_schedule_values():
    s = LRSchedule.reference()
    assert s.factor(0) == pytest.approx(1e-6)
    assert s.factor(1000) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert s.factor(2000) == pytest.approx(1.0)
    assert s.factor(11000) == pytest.approx(0.3 + 0.7 * 9000 / 18000)
    assert s.factor(20000) == pytest.approx(0.3)       # the cycle end still belongs to cycle 1
    assert s.factor(20001) == pytest.approx(0.06)
    assert s.factor(10**7) == pytest.approx(0.06)
    with pytest.raises(ConfigError):
        LRSchedule((10,), (5,), (0.0,), (1.0,), (0.1,))


# --- augmentation ------------------------------------------------------------------------------------
def test_crop_side_and_param_ranges():
    assert crop_side(224, 0.9) == 213
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = sample_params(224, g)
        assert 0 <= p.top <= 11 and 0 <= p.left <= 11 and p.crop == 213
        assert -5 <= p.angle_deg <= 5 and 0.7 <= p.brightness <= 1.3 and 0.6 <= p.contrast <= 1.4
        assert 0.5 <= p.saturation <= 1.5 and -0.05 <= p.hue <= 0.05


def test_jitter_hand_computed():
    x = torch.full((1, 3, 2, 2), 0.5)
    assert torch.allclose(adjust_brightness(x, 1.2), torch.full_like(x, 0.6))
    y = torch.tensor([[[[0.2, 0.6], [0.2, 0.6]]]]).repeat(1, 3, 1, 1)  # grey image, mean 0.4
    assert torch.allclose(adjust_contrast(y, 1.5), 1.5 * y - 0.5 * 0.4, atol=1e-4)  # luma weights sum to 0.9999


def test_augmentation_shares_parameters_across_frames_and_keeps_black_black():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    current = {"left_wrist": img, "right_wrist": np.zeros_like(img), "top": img}
    future = {"left_wrist": img, "right_wrist": img, "top": img}
    cur, fut, params = augment_sample_images(current, future, torch.Generator().manual_seed(1))
    # Identical inputs give identical outputs: one crop, one angle, one jitter for the whole sample.
    assert torch.equal(cur["left_wrist"], cur["top"]) and torch.equal(cur["top"], fut["right_wrist"])
    assert int(cur["right_wrist"].max()) == 0          # blank stays black
    assert not torch.equal(cur["top"], torch.as_tensor(img))
    # And they equal an independent application of the returned parameters.
    again = apply_params(torch.as_tensor(img)[None], params)[0]
    assert torch.equal(again, cur["top"])


def test_crop_only_params_are_a_plain_crop_resize():
    img = torch.arange(16 * 16 * 3, dtype=torch.int64).reshape(16, 16, 3).remainder(256).to(torch.uint8)
    p = AugmentParams(top=0, left=0, crop=16, angle_deg=0.0, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
    out = apply_params(img[None], p)[0]
    # Identity crop + unit jitter (contrast 1, saturation 1) reproduces the input up to rounding.
    assert (out.int() - img.int()).abs().max() <= 1
    assert math.isclose(float(out.float().mean()), float(img.float().mean()), abs_tol=0.6)
