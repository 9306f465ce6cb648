"""BestOfNPlanner: aggregation, batched == sequential, deadline, base-seed rule, depth > 1, planning model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_policy_core.engines.base import Denoiser
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.layout import extract_proprio, tile_to_frame
from cosmos_policy_core.runtime.planner import (
    BestOfNPlanner, PlannerConfig, aggregate_values, ensemble_steps, next_state_prior,
)
from cosmos_policy_core.runtime.policy import CosmosPolicy
from cosmos_policy_core.testing import build_random_checkpoint, random_observation

SMALL = dict(num_candidates=3, action_steps=1, world_model_samples=2, world_model_max_steps=3, value_samples=2,
             value_max_steps=2, aggregation="mean")


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> CosmosPolicy:
    path = build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", image_size=64, text_len=16)
    return CosmosPolicy.from_checkpoint(path)


@pytest.fixture(scope="module")
def cond(policy):
    return policy.encode_observation(random_observation(policy.layout, stats=policy.stats, height=96, width=128))


def test_ensemble_steps_match_reference_defaults():
    cfg = PlannerConfig()
    assert cfg.world_model_steps == [1, 3, 5] and cfg.value_steps == [1, 2, 3, 4, 5]
    assert ensemble_steps(1, 5) == [1]


def test_aggregations():
    v = np.array([[0.9, 0.01, 0.3], [0.7, 0.02, 0.04], [0.01, 0.03, 0.5], [0.8, 0.9, 0.02]])  # (E=4, B=3)
    np.testing.assert_allclose(aggregate_values(v, "mean"), v.mean(0))
    np.testing.assert_allclose(aggregate_values(v, "vote"), [0.75, 0.25, 0.5])
    # candidate 0: 3 of 4 above 0.05 -> mean of those; 1: 1 of 4 -> 0; 2: 2 of 4 (half) -> mean of those
    np.testing.assert_allclose(aggregate_values(v, "majority_mean"), [0.8, 0.0, 0.4])
    np.testing.assert_allclose(aggregate_values(v, "lcb"), np.clip(v.mean(0) - v.std(0, ddof=1), 0, 1))
    with pytest.raises(ConfigError, match="majority_mean"):
        aggregate_values(v, "median")


def test_config_validation():
    with pytest.raises(ConfigError, match="value_mode"):
        PlannerConfig(value_mode="V")
    with pytest.raises(ConfigError, match="world model"):
        PlannerConfig(value_mode="Q(s,a)", search_depth=2)


def test_batched_equals_sequential(policy, cond):
    batched = BestOfNPlanner(policy, PlannerConfig(**SMALL, batch_candidates=3)).plan(cond, base_seed=10)
    sequential = BestOfNPlanner(policy, PlannerConfig(**SMALL, batch_candidates=1)).plan(cond, base_seed=10)
    assert [c.seed for c in batched.candidates] == [10, 11, 12]
    assert batched.best_index == sequential.best_index and batched.num_scored == 3 and not batched.timed_out
    for a, b in zip(batched.candidates, sequential.candidates):
        np.testing.assert_allclose(a.raw_values, b.raw_values, atol=1e-5)
        assert a.raw_values.shape == (1, 4)  # 2 world-model samples x 2 value samples
    np.testing.assert_allclose(batched.chunk.actions, sequential.chunk.actions, atol=1e-5)
    best = max(c.value for c in batched.candidates)
    assert batched.chunk.value == best
    # the winner's actions are the policy's own sample for that seed
    direct = policy.actions_from_latent(policy.sample_actions(cond, [batched.chunk.seed], 1))[0]
    np.testing.assert_allclose(batched.chunk.actions, direct, atol=1e-5)


class _Clocked(Denoiser):
    """Wraps a denoiser; every network call advances a fake clock by one second."""

    def __init__(self, inner: Denoiser) -> None:
        self.inner, self.device, self.now, self.calls = inner, inner.device, 0.0, 0

    def predict_x0(self, *args):
        self.now += 1.0
        self.calls += 1
        return self.inner.predict_x0(*args)


def _with_denoiser(policy, denoiser, planning=None):
    twin = policy.with_config()
    twin.denoiser = denoiser
    twin.planning_denoiser = planning
    return twin


def test_deadline_returns_best_scored_so_far(policy, cond):
    clocked = _Clocked(policy.denoiser)
    pol = _with_denoiser(policy, clocked)
    cfg = PlannerConfig(num_candidates=4, action_steps=1, world_model_samples=1, world_model_max_steps=1,
                        value_samples=1, value_max_steps=1, batch_candidates=1)
    # 3 network calls per candidate: candidate 0 done at t=3, candidate 1 interrupted at t=5 > 4.5
    result = BestOfNPlanner(pol, cfg, clock=lambda: clocked.now).plan(cond, base_seed=0, deadline=4.5)
    assert result.timed_out and result.num_scored == 1 and result.best_index == 0
    assert result.chunk is not None and result.chunk.seed == 0 and result.chunk.actions.shape == (50, 14)
    clocked.now = 0.0
    nothing = BestOfNPlanner(pol, cfg, clock=lambda: clocked.now).plan(cond, deadline=0.5)
    assert nothing.timed_out and nothing.num_scored == 0 and nothing.chunk is None


def test_base_seed_kept_on_ties(policy, cond):
    cfg = PlannerConfig(**{**SMALL, "aggregation": "vote", "success_threshold": 2.0})  # every score is 0
    result = BestOfNPlanner(policy, cfg).plan(cond, base_seed=42)
    assert all(c.value == 0.0 for c in result.candidates)
    assert result.best_index == 0 and result.chunk.seed == 42


def test_planning_model_does_world_model_and_value(policy, cond):
    policy_net, planning_net = _Clocked(policy.denoiser), _Clocked(policy.denoiser)
    pol = _with_denoiser(policy, policy_net, planning_net)
    BestOfNPlanner(pol, PlannerConfig(**SMALL)).plan(cond)
    # one batched action call; WM steps [1, 3] = 4 calls; value steps [1, 2] (2 = the 1-step quirk) = 2 calls
    assert policy_net.calls == 1
    assert planning_net.calls == 4 + 2


def test_depth_two_reinjects_predicted_proprio(policy, cond):
    action = policy.sample_actions(cond, [1], 1)
    future = policy.predict_future(cond, action, [1], 1)
    prior, proprio = next_state_prior(policy, future)
    lay = policy.layout
    torch.testing.assert_close(proprio, extract_proprio(future, lay.index("future_proprio"), 14).float())
    assert (proprio - cond.proprio_1_D).abs().max() > 1e-3
    for cur, fut in zip(lay.cameras, lay.cameras):
        torch.testing.assert_close(prior[:, :, lay.index(cur)], future[:, :, lay.index(f"future_{fut}")])
    # the next action sample conditions on the predicted proprio, not the observation's (reference defect §13.4)
    nxt = policy.sample_actions(cond, [1], 1, prior_B_C_T_H_W=prior, proprio_B_D=proprio)
    C, _, H, W = lay.latent_shape
    torch.testing.assert_close(nxt[:, :, 1], tile_to_frame(proprio, C, H, W))

    cfg = PlannerConfig(num_candidates=2, action_steps=1, world_model_samples=1, world_model_max_steps=1,
                        value_samples=1, value_max_steps=1, search_depth=2)
    result = BestOfNPlanner(policy, cfg).plan(cond)
    assert all(len(c.values_by_depth) == 2 and c.value == c.values_by_depth[-1] for c in result.candidates)
