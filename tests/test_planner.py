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


# --- the plan budget: which plan fits the deadline ----------------------------------------------------------
class _Recording(Denoiser):
    """Wraps a denoiser and records the rows of every network evaluation."""

    def __init__(self, inner: Denoiser, name: str, log: list) -> None:
        self.inner, self.device, self.name, self.log = inner, inner.device, name, log

    def predict_x0(self, x_sigma, *args):
        self.log.append((self.name, x_sigma.shape[0]))
        return self.inner.predict_x0(x_sigma, *args)


@pytest.mark.parametrize("changes", [{}, {"batch_candidates": 2}, {"value_mode": "Q(s,a)"}, {"search_depth": 2},
                                     {"action_steps": 3, "value_samples": 3}])
def test_network_calls_are_the_calls_the_planner_makes(policy, cond, changes):
    from cosmos_policy_core.diffusion import sampling_sigmas
    from cosmos_policy_core.runtime.plan_budget import network_calls

    log: list = []
    pol = _with_denoiser(policy.with_config(sample_batch=4), _Recording(policy.denoiser, "policy", log),
                         _Recording(policy.denoiser, "planning", log))
    config = PlannerConfig(**{**SMALL, **changes})
    BestOfNPlanner(pol, config).plan(cond)
    calls = network_calls(config, lambda steps: len(sampling_sigmas(steps, policy.diffusion)), sample_batch=4)
    assert log == [(model, rows) for model, rows, evaluations in calls for _ in range(evaluations)]
    assert max(rows for _, rows in log) <= 4  # rows above sample_batch are split


def _fake_costs():
    from cosmos_policy_core.runtime.plan_budget import PlanCosts

    # 10 ms per row and network evaluation (linear: 64 rows = 640 ms), encode 100 ms, decode 50 ms per frame set.
    linear = {1: 0.01, 64: 0.64}
    return PlanCosts(encode_s=0.1, eval_s={"policy": linear, "planning": linear}, decode_s=0.05)


# Predicted seconds of the ladder from the reference deployment (8 candidates x 10 steps, world model [1, 3, 5],
# value [1, 2, 3, 4, 5], frames), by hand: row-evaluations x 10 ms + 100 ms encode (+ 3 decodes x 50 ms).
#   requested: actions 8 rows x 10 + world model 8 x (1+3+5) + value 24 x (1+1+3+4+5) = 488 -> 5.13 s
#   no frames 4.98; value 3 [1,3,5]: 80 + 72 + 24 x 9 = 368 -> 3.78; value 2 [1,5]: 296 -> 3.06;
#   value 1: 176 -> 1.86; world model 2 [1,5]: 80 + 8 x 6 + 16 = 144 -> 1.54; world model 1: 96 -> 1.06;
#   steps 5: 56 -> 0.66; steps 3: 40 -> 0.50; steps 1 (2 is the same sampler, skipped): 24 -> 0.34;
#   then 3 row-evaluations per candidate: 7 -> 0.31, 6 -> 0.28, 5 -> 0.25, 4 -> 0.22, 3 -> 0.19, 2 -> 0.16.
CHOICES = [
    (10.0, dict(num_candidates=8, action_steps=10, world_model_samples=3, value_samples=5, return_future_images=True),
     5.13),
    (5.0, dict(num_candidates=8, action_steps=10, world_model_samples=3, value_samples=5), 4.98),
    (2.0, dict(num_candidates=8, action_steps=10, world_model_samples=3, value_samples=1), 1.86),
    (1.0, dict(num_candidates=8, action_steps=5, world_model_samples=1, value_samples=1), 0.66),
    (0.3, dict(num_candidates=6, action_steps=1, world_model_samples=1, value_samples=1), 0.28),
    (0.17, dict(num_candidates=2, action_steps=1, world_model_samples=1, value_samples=1), 0.16),
]


@pytest.mark.parametrize("budget_s,expected,predicted_s", CHOICES)
def test_chooser_cuts_in_the_documented_order(budget_s, expected, predicted_s):
    from cosmos_policy_core.runtime.plan_budget import choose_plan

    requested = PlannerConfig(return_future_images=True)
    chosen, predicted = choose_plan(_fake_costs(), requested, budget_s)
    expected = {"return_future_images": False, **expected}
    assert {k: getattr(chosen, k) for k in expected} == expected
    assert predicted == pytest.approx(predicted_s) and predicted <= budget_s
    # the unchanged settings stay as requested
    assert (chosen.aggregation, chosen.world_model_max_steps, chosen.batch_candidates) == ("majority_mean", 5, 8)


def test_nothing_fits_below_the_smallest_plan():
    from cosmos_policy_core.runtime.plan_budget import choose_plan

    chosen, predicted = choose_plan(_fake_costs(), PlannerConfig(), 0.15)
    assert chosen is None and predicted == pytest.approx(0.16)
    # a slower machine (measured slowdown 2) gets a smaller plan for the same budget
    chosen, predicted = choose_plan(_fake_costs(), PlannerConfig(), 1.02, slowdown=2.0)
    assert (chosen.num_candidates, chosen.action_steps) == (8, 3) and predicted == pytest.approx(1.0)


def test_budget_adapts_pauses_probes_and_resumes():
    from cosmos_policy_core.runtime.plan_budget import PlanBudget

    now = [0.0]
    budget = PlanBudget(_fake_costs(), PlannerConfig(), deadline_s=1.3, headroom=0.8, probe_every_s=30.0,
                        clock=lambda: now[0])
    assert budget.budget_s == pytest.approx(1.04) and budget.chosen.action_steps == 5 and not budget.paused
    status = budget.status()
    assert status["planning"] == "on" and status["plan_candidates"] == "8" and status["plan_action_steps"] == "5"
    # plans take twice the prediction (the CPU is shared): a smaller plan
    assert budget.record(budget.chosen, 2 * 0.66)
    assert budget.slowdown == pytest.approx(2.0) and budget.chosen.action_steps == 3
    # much slower: even 2 candidates x 1 step (0.16 s predicted, x 10) cannot fit -> paused, and it says so
    for _ in range(3):
        ran = budget.chosen or budget.smallest
        budget.record(ran, 10 * budget.costs.plan_seconds(ran))
    assert budget.paused and budget.status()["planning"] == "paused"
    assert "smallest plan (2 candidates x 1 step, world model 1, value 1, no frames)" in budget.describe()
    # paused: one probe with the smallest plan, then nothing until probe_every_s has passed
    assert budget.next_config() == budget.smallest
    assert budget.next_config() is None
    now[0] = 31.0
    probe = budget.next_config()
    assert probe == budget.smallest
    # the machine is free again: the probes measure it and planning resumes
    for _ in range(5):
        budget.record(probe, budget.costs.plan_seconds(probe))
    assert not budget.paused and budget.chosen.action_steps == 5
    # a plan cut off by its deadline counts 1.5 times as slow as when it was cut off
    budget.record(budget.chosen, budget.costs.plan_seconds(budget.chosen), timed_out=True)
    assert max(budget._ratios) == pytest.approx(1.5)


def test_measured_costs_of_a_tiny_checkpoint_choose_a_plan_that_runs(policy):
    from cosmos_policy_core.runtime.plan_budget import PlanBudget, choose_plan, measure_plan_costs

    obs = random_observation(policy.layout, stats=policy.stats, height=96, width=128)
    requested = PlannerConfig(**{**SMALL, "return_future_images": True})
    costs = measure_plan_costs(policy, obs, requested)
    # rows measured: 1, 2 and the largest call (3 candidates x 2 world-model samples = 6 value rows), both models
    assert set(costs.eval_s["policy"]) == {1, 2, 4, 6} and costs.eval_s["planning"] == costs.eval_s["policy"]
    assert costs.encode_s > 0 and costs.decode_s > 0 and all(t > 0 for t in costs.eval_s["policy"].values())
    full, smallest = costs.plan_seconds(requested), costs.plan_seconds(PlanBudget(costs, requested, 1.0).smallest)
    assert full > smallest > costs.encode_s
    assert choose_plan(costs, requested, 10 * full)[0] == requested
    chosen, predicted = choose_plan(costs, requested, 1.01 * smallest)
    assert chosen.action_steps == 1 and chosen.value_samples == 1 and predicted <= 1.01 * smallest
    assert choose_plan(costs, requested, 0.5 * smallest)[0] is None
    # the chosen plan runs, and its measured time is the slowdown
    budget = PlanBudget(costs, requested, deadline_s=full / 0.8 * 0.9)
    config = budget.next_config()
    assert config != requested and config.num_candidates >= 2
    result = BestOfNPlanner(policy, config).plan(obs)
    assert result.chunk is not None
    budget.record(config, result.timings["total"], result.timed_out)
    ratio = result.timings["total"] / costs.plan_seconds(config) * (1.5 if result.timed_out else 1.0)
    assert budget.slowdown == pytest.approx(ratio)


# --- policy and planner in one process, the policy first ----------------------------------------------------
class _Slow(Denoiser):
    """Counts evaluations; each also sleeps `seconds` (a network call long enough to observe)."""

    def __init__(self, inner: Denoiser, seconds: float) -> None:
        self.inner, self.device, self.seconds, self.calls = inner, inner.device, seconds, 0

    def predict_x0(self, *args):
        import time

        time.sleep(self.seconds)
        self.calls += 1
        return self.inner.predict_x0(*args)


def test_policy_first_planner_waits_while_the_policy_computes(policy, cond):
    import threading
    import time

    from cosmos_policy_core.runtime.planner import PolicyFirst

    slow = _Slow(policy.denoiser, 0.02)
    shared = _with_denoiser(policy, slow)           # one set of weights for policy and planner
    first = PolicyFirst("cpu")
    planner = BestOfNPlanner(shared, PlannerConfig(**SMALL), policy_first=first)
    results = {}
    with first.policy_turn():
        worker = threading.Thread(target=lambda: results.update(plan=planner.plan(cond)))
        worker.start()
        time.sleep(0.5)
        assert slow.calls == 0                      # the planner starts no evaluation during the policy's turn
        shared.sample_actions(cond, [0], 1)         # while the policy's own evaluations run
        assert slow.calls == 1
    worker.join(120)
    assert results["plan"].num_scored == 3 and first.planner_waited_s >= 0.4
    alone = BestOfNPlanner(policy, PlannerConfig(**SMALL)).plan(cond)
    assert results["plan"].best_index == alone.best_index
    np.testing.assert_array_equal(results["plan"].chunk.actions, alone.chunk.actions)

    # A turn that starts mid-plan: at most the evaluation in flight runs beside it.
    worker = threading.Thread(target=lambda: results.update(plan=planner.plan(cond)))
    slow.calls = 0
    worker.start()
    while slow.calls < 2 and worker.is_alive():
        time.sleep(0.005)
    with first.policy_turn():
        before = slow.calls
        time.sleep(0.3)
        assert slow.calls <= before + 1
    worker.join(120)
    assert results["plan"].num_scored == 3
