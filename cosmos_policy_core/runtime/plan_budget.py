"""Which best-of-N plan fits a deadline: measured per-call costs, the plan's network calls, and a chooser that cuts
the planner's configuration in a fixed order (`CUT_ORDER`) until the predicted plan time fits.

`PlanBudget` keeps choosing as plans are timed, and pauses planning only when even `SMALLEST_PLAN` cannot fit.
"""
from __future__ import annotations

import bisect
import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping

import torch

from cosmos_policy_core.diffusion import DiffusionConfig, sampling_sigmas
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.planner import PlannerConfig
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation

log = logging.getLogger(__name__)

# What a plan that does not fit gives up first, in order, each as far as it goes before the next is touched:
# decoded frames are for display and never change which chunk wins; the value and world-model ensembles only
# steady each candidate's score; the candidates' denoising steps make each candidate; candidates come last,
# since choosing among them is what planning is.
CUT_ORDER = ("return_future_images", "value_samples", "world_model_samples", "action_steps", "num_candidates")
# The smallest plan worth running: a choice between two candidates, one network evaluation each per stage.
SMALLEST_PLAN = {"return_future_images": False, "value_samples": 1, "world_model_samples": 1, "action_steps": 1,
                 "num_candidates": 2}


def network_calls(config: PlannerConfig, evaluations: Callable[[int], int], sample_batch: int = 64
                  ) -> list[tuple[str, int, int]]:
    """(model, rows, network evaluations) of every network call one `BestOfNPlanner.plan` makes, in its order.

    Per batch of candidates and search depth: the action samples (policy model), then the world-model
    ensemble and the value ensemble (planning model), members with the same step count in one call;
    `evaluations(steps)` is the sampler's network evaluations for a step count; calls of more than
    `sample_batch` rows are split, as `CosmosPolicy.sample_role` does.
    """
    calls: list[tuple[str, int, int]] = []

    def add(model: str, rows: int, steps: int) -> None:
        for start in range(0, rows, sample_batch):
            calls.append((model, min(sample_batch, rows - start), evaluations(steps)))

    def grouped(model: str, steps_per_job: list[int], rows_per_job: int) -> None:
        for steps in dict.fromkeys(steps_per_job):   # first-seen order, as the planner groups its jobs
            add(model, rows_per_job * steps_per_job.count(steps), steps)

    n_total = config.num_candidates
    for first in range(0, n_total, config.batch_candidates):
        n = min(config.batch_candidates, n_total - first)
        for _ in range(config.search_depth):
            add("policy", n, config.action_steps)
            if config.value_mode == "Q(s,a)":
                grouped("planning", config.value_steps, n)
            else:
                grouped("planning", config.world_model_steps, n)
                grouped("planning", config.value_steps * config.world_model_samples, n)
    return calls


@dataclass(frozen=True)
class PlanCosts:
    """Seconds the parts of a plan take on one machine (`measure_plan_costs`), and the plan time they predict.

    eval_s: model ("policy", "planning") -> {rows: seconds of one network evaluation of that many rows},
    interpolated linearly between the measured row counts and extended along the last two beyond them.
    """

    encode_s: float
    eval_s: Mapping[str, Mapping[int, float]]
    decode_s: float                                   # the predicted frames of one latent row
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample_batch: int = 64

    def __post_init__(self) -> None:
        for model in ("policy", "planning"):
            if not self.eval_s.get(model):
                raise ConfigError(f"PlanCosts.eval_s needs measured row counts for the {model!r} model")

    def evaluations(self, steps: int) -> int:
        return len(sampling_sigmas(steps, self.diffusion))

    def eval_seconds(self, model: str, rows: int) -> float:
        table = self.eval_s[model]
        points = sorted(table)
        if rows in table:
            return table[rows]
        if len(points) == 1:
            return table[points[0]] * rows / points[0]
        i = min(max(bisect.bisect_left(points, rows), 1), len(points) - 1)
        r0, r1 = points[i - 1], points[i]
        t0, t1 = table[r0], table[r1]
        return max(t0 + (t1 - t0) * (rows - r0) / (r1 - r0), 0.0)

    def plan_seconds(self, config: PlannerConfig) -> float:
        """Predicted seconds of `BestOfNPlanner.plan` on an observation: encode, network calls, decoded frames."""
        seconds = self.encode_s
        for model, rows, evaluations in network_calls(config, self.evaluations, self.sample_batch):
            seconds += evaluations * self.eval_seconds(model, rows)
        if config.return_future_images:
            # The winner's frames: one decode per world-model sample (the action sample's with Q(s,a)).
            seconds += self.decode_s * (1 if config.value_mode == "Q(s,a)" else config.world_model_samples)
        return seconds


def _levels(name: str, value) -> list:
    """The values a cut of `name` steps through below `value`, down to SMALLEST_PLAN's (never below `value`)."""
    floor = SMALLEST_PLAN[name]
    if name == "return_future_images":
        return [False] if value else []
    if name == "num_candidates":   # the most candidates that fit: one at a time
        return list(range(value - 1, floor - 1, -1))
    levels = []
    while value > floor:          # ensembles and steps: halve, rounding up
        value = max(floor, -(-value // 2))
        # 2 denoising steps are the 1-step sampler in the reference's schedule (DiffusionConfig): the same plan
        if not (name == "action_steps" and value == 2):
            levels.append(value)
    return levels


def plan_ladder(config: PlannerConfig) -> Iterator[PlannerConfig]:
    """`config`, then one cut at a time in CUT_ORDER, down to the smallest useful plan; each costs no more."""
    current = config
    yield current
    for name in CUT_ORDER:
        for value in _levels(name, getattr(current, name)):
            current = replace(current, **{name: value})
            yield current


def choose_plan(costs: PlanCosts, config: PlannerConfig, budget_s: float,
                slowdown: float = 1.0) -> tuple[PlannerConfig | None, float]:
    """(the first configuration of `plan_ladder(config)` predicted to fit `budget_s`, its predicted seconds);
    (None, the smallest plan's predicted seconds) when none fits. Predictions are scaled by `slowdown`."""
    predicted = 0.0
    for candidate in plan_ladder(config):
        predicted = costs.plan_seconds(candidate) * slowdown
        if predicted <= budget_s:
            return candidate, predicted
    return None, predicted


def describe_plan(config: PlannerConfig) -> str:
    """One line for logs and diagnostics: '8 candidates x 10 steps, world model 3, value 5, frames'."""
    steps = f"{config.action_steps} step" + ("s" if config.action_steps != 1 else "")
    parts = [f"{config.num_candidates} candidates x {steps}"]
    if config.value_mode != "Q(s,a)":
        parts.append(f"world model {config.world_model_samples}")
    parts.append(f"value {config.value_samples}")
    if config.search_depth > 1:
        parts.append(f"depth {config.search_depth}")
    parts.append("frames" if config.return_future_images else "no frames")
    return ", ".join(parts)


def _sync(policy: CosmosPolicy) -> None:
    if policy.device.type == "cuda":
        torch.cuda.synchronize(policy.device)


@torch.no_grad()
def measure_plan_costs(policy: CosmosPolicy, observation: Observation, config: PlannerConfig,
                       clock: Callable[[], float] = time.perf_counter) -> PlanCosts:
    """Times, on this machine, what `config`'s plan and every cut of it are made of: an encode of `observation`,
    one network evaluation of each model at 1, 2, 4, ... rows up to the largest call of `config`, and the
    decode of one predicted frame set. Each runs twice and the faster time counts: the first run also warms
    up (allocations, kernel choice), and a busy moment of a shared machine is not the cost."""

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(2):
            _sync(policy)
            t0 = clock()
            out = fn()
            _sync(policy)
            best = min(best, clock() - t0)
        return best, out

    sample_batch = policy.config.sample_batch

    def evaluations(steps: int) -> int:
        return len(sampling_sigmas(steps, policy.diffusion))

    largest = max(rows for c in plan_ladder(config) for _, rows, _ in network_calls(c, evaluations, sample_batch))
    points = sorted({2 ** k for k in range(largest.bit_length()) if 2 ** k <= largest} | {largest})
    encode_s, cond = timed(lambda: policy.encode_observation(observation))
    models = ("policy", "planning") if policy.planning_denoiser is not None else ("policy",)
    eval_s: dict[str, dict[int, float]] = {}
    latent = None
    for model in models:
        def evaluate(rows: int, model=model) -> torch.Tensor:
            return policy.sample_role(cond, "policy", cond.gt_1_C_T_H_W, list(range(rows)), 1, model=model)

        measured = []
        for rows in points:
            seconds, out = timed(lambda rows=rows: evaluate(rows))
            measured.append(seconds)
            latent = out[:1] if latent is None else latent
        # More rows never cost less; a noisy measurement that says so would make a larger plan look cheaper.
        eval_s[model] = {rows: max(measured[:i + 1]) for i, rows in enumerate(points)}
    eval_s.setdefault("planning", eval_s["policy"])
    decode_s, _ = timed(lambda: policy.decode_future_images(cond, latent))
    costs = PlanCosts(encode_s, eval_s, decode_s, policy.diffusion, sample_batch)
    log.info("plan costs: encode %.0f ms, decode %.0f ms, one evaluation %s", encode_s * 1e3, decode_s * 1e3,
             "; ".join(f"{m}: " + ", ".join(f"{r} rows {t * 1e3:.0f} ms" for r, t in table.items())
                       for m, table in eval_s.items()))
    return costs


class PlanBudget:
    """Chooses the plan that fits `deadline_s` from measured costs, and keeps choosing as plans are timed.

    A plan may use `headroom` of the deadline (the rest is the observation's age and jitter). Predictions are
    scaled by the slowdown: the median of measured / predicted plan time over the last `window` plans (1 until
    a plan is timed; a plan cut off by its deadline counts 1.5 times as slow as when it was cut off), so a
    machine that gets busier (the policy sharing it) gets a smaller plan and one that frees up a larger one.
    When nothing fits, planning pauses, and every `probe_every_s` the smallest plan runs once to measure again.
    """

    def __init__(self, costs: PlanCosts, requested: PlannerConfig, deadline_s: float, *, headroom: float = 0.8,
                 window: int = 5, probe_every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not deadline_s > 0:
            raise ConfigError(f"deadline_s must be positive, got {deadline_s}")
        if not 0 < headroom <= 1:
            raise ConfigError(f"headroom must be in (0, 1], got {headroom}")
        self.costs = costs
        self.requested = requested
        self.deadline_s = float(deadline_s)
        self.headroom = float(headroom)
        self.probe_every_s = float(probe_every_s)
        self._clock = clock
        self._ratios: deque[float] = deque(maxlen=window)
        self._last_probe: float | None = None
        self.slowdown = 1.0
        self.smallest = replace(requested, **{k: min(v, getattr(requested, k)) for k, v in SMALLEST_PLAN.items()})
        self.chosen: PlannerConfig | None = None
        self.predicted_s = 0.0
        self.changes = 0
        self._choose()

    @property
    def budget_s(self) -> float:
        return self.deadline_s * self.headroom

    @property
    def paused(self) -> bool:
        return self.chosen is None

    def _choose(self) -> bool:
        chosen, predicted = choose_plan(self.costs, self.requested, self.budget_s, self.slowdown)
        changed = chosen != self.chosen
        self.chosen, self.predicted_s = chosen, predicted
        if changed:
            self.changes += 1
            log.info("planning %s", self.describe())
        return changed

    def next_config(self) -> PlannerConfig | None:
        """The configuration to plan with now: the chosen one; while paused, the smallest plan once every
        `probe_every_s` (a probe that measures again), else None."""
        if self.chosen is not None:
            return self.chosen
        now = self._clock()
        if self._last_probe is None or now - self._last_probe >= self.probe_every_s:
            self._last_probe = now
            return self.smallest
        return None

    def record(self, config: PlannerConfig, seconds: float, timed_out: bool = False) -> bool:
        """Take a plan's measured seconds (`PlanResult.timings['total']`) into the slowdown; True when the
        chosen configuration changed."""
        predicted = self.costs.plan_seconds(config)
        if predicted <= 0:
            return False
        self._ratios.append(seconds / predicted * (1.5 if timed_out else 1.0))
        self.slowdown = statistics.median(self._ratios)
        return self._choose()

    def describe(self) -> str:
        if self.chosen is None:
            return (f"paused: the smallest plan ({describe_plan(self.smallest)}) needs ~{self.predicted_s * 1e3:.0f} "
                    f"ms, the budget is {self.budget_s * 1e3:.0f} ms ({self.headroom:.0%} of deadline_s "
                    f"{self.deadline_s:g} s); it is measured again every {self.probe_every_s:g} s")
        return (f"{describe_plan(self.chosen)} (~{self.predicted_s * 1e3:.0f} ms of a {self.budget_s * 1e3:.0f} ms "
                f"budget)")

    def status(self) -> dict[str, str]:
        """Diagnostics key -> value: the chosen plan, its predicted time, the slowdown."""
        values = {"planning": "paused" if self.paused else "on", "plan": self.describe(),
                  "plan_predicted_ms": f"{self.predicted_s * 1e3:.0f}", "plan_budget_ms": f"{self.budget_s * 1e3:.0f}",
                  "plan_slowdown": f"{self.slowdown:.2f}"}
        if self.chosen is not None:
            values.update({"plan_candidates": str(self.chosen.num_candidates),
                           "plan_action_steps": str(self.chosen.action_steps),
                           "plan_world_model_samples": str(self.chosen.world_model_samples),
                           "plan_value_samples": str(self.chosen.value_samples),
                           "plan_frames": str(self.chosen.return_future_images).lower()})
        return values


__all__ = ["CUT_ORDER", "SMALLEST_PLAN", "PlanBudget", "PlanCosts", "choose_plan", "describe_plan",
           "measure_plan_costs", "network_calls", "plan_ladder"]
