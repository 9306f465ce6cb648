"""`planner` lifecycle node: best-of-N (world model + value ensembles) in the slack of the executing chunk.

Publishes cosmos/plan/action_chunk and its predictions only for plans ready within `deadline_s` of their observation.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Float32

from cosmos_aloha import topics
from cosmos_aloha.chunks import chunk_to_msg
from cosmos_aloha.inference_node import COMMON_PARAMETERS, InferenceNode, Job, load_policy
from cosmos_aloha.markers import value_marker
from cosmos_aloha.node_runtime import run_node
from cosmos_aloha.parameters import Param, replaced
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.plan_budget import PlanBudget, measure_plan_costs
from cosmos_policy_core.runtime.planner import BestOfNPlanner, PlannerConfig
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation

_REF = PlannerConfig()
PARAMETERS = (
    # One thread: the planner works in the policy's slack, and on a small CPU a planner taking every core
    # made one network evaluation ~100x slower (benchmarks/RESULTS.md, "The planner node's budget").
    *replaced(COMMON_PARAMETERS, torch_threads=1),
    Param("planning_checkpoint", "", "fine-tuned planning model for world model + value (\"\" = the policy network)"),
    Param("num_candidates", _REF.num_candidates, "N of best-of-N, batched; candidates use seeds seed .. seed + N - 1"),
    Param("action_steps", _REF.action_steps, "denoising steps of each action candidate"),
    Param("world_model_samples", _REF.world_model_samples,
          "world-model ensemble per candidate (steps linspace(1, max, K))"),
    Param("world_model_max_steps", _REF.world_model_max_steps, "most steps in the world-model ensemble"),
    Param("value_samples", _REF.value_samples, "value ensemble per world-model sample"),
    Param("value_max_steps", _REF.value_max_steps, "most steps in the value ensemble"),
    Param("value_mode", _REF.value_mode, "V(s'), V(s,a,s') or Q(s,a)"),
    Param("aggregation", _REF.aggregation, "majority_mean, mean, lcb or vote"),
    Param("search_depth", _REF.search_depth, "> 1 plans on predicted states (needs a world model)"),
    Param("batch_candidates", _REF.batch_candidates, "candidates per network batch"),
    Param("deadline_s", 1.0, "a plan is published only if ready within this of its observation. At configure the "
                             "planner measures its costs and plans with the largest configuration (the settings "
                             "above are the most) predicted to take 80 % of it, re-measured on every plan; it pauses "
                             "(diagnostics say why) when not even 2 candidates x 1 step fit. The search gets what is "
                             "left after the observation's age and a decode reserve; a plan still late is dropped"),
)


def planner_config(p) -> PlannerConfig:
    return PlannerConfig(
        num_candidates=int(p.num_candidates), action_steps=int(p.action_steps),
        world_model_samples=int(p.world_model_samples), world_model_max_steps=int(p.world_model_max_steps),
        value_samples=int(p.value_samples), value_max_steps=int(p.value_max_steps), value_mode=str(p.value_mode),
        aggregation=str(p.aggregation), search_depth=int(p.search_depth), batch_candidates=int(p.batch_candidates),
        return_future_images=bool(p.return_future_images))


class PlannerNode(InferenceNode):
    def __init__(self):
        self.planner: BestOfNPlanner | None = None
        self.budget: PlanBudget | None = None
        self._decode_reserve_s = 0.0
        super().__init__("planner", PARAMETERS)

    # -- InferenceNode hooks ----------------------------------------------------------------------------
    def load(self) -> CosmosPolicy:
        if not float(self.p.deadline_s) > 0:
            raise ConfigError(f"deadline_s must be positive, got {self.p.deadline_s}")
        config = planner_config(self.p)
        policy = load_policy(self.p, planning_checkpoint=str(self.p.planning_checkpoint))
        self.planner = BestOfNPlanner(policy, config)
        return policy

    def output_topics(self) -> tuple[str, str]:
        return topics.PLAN_CHUNK.name, topics.PLAN_PREDICTED

    def destroy_outputs(self) -> None:
        super().destroy_outputs()
        self.planner = None

    def warm_up(self, observation: Observation) -> dict[str, float]:
        # The costs of a plan on this machine choose the plan that fits deadline_s (runtime/plan_budget.py).
        costs = measure_plan_costs(self.policy, observation, self.planner.config)
        self.budget = PlanBudget(costs, self.planner.config, float(self.p.deadline_s))
        self._use_plan()
        if self.budget.paused:
            self.get_logger().warning(f"planning {self.budget.describe()}; a faster engine or device helps")
        else:
            self.get_logger().info(f"planning with {self.budget.describe()}")
        return {"encode": costs.encode_s, "decode": costs.decode_s, "plan_predicted": self.budget.predicted_s}

    def _use_plan(self) -> None:
        config = self.budget.chosen or self.budget.smallest
        self.planner.config = config
        # The library checks its deadline between network calls and decodes the winner's frames after it;
        # the node keeps the decode's predicted time (x1.5) out of the search budget.
        costs = self.budget.costs
        decode_s = costs.plan_seconds(config) - costs.plan_seconds(replace(config, return_future_images=False))
        self._decode_reserve_s = 1.5 * decode_s

    def infer(self, job: Job) -> int | None:
        deadline_s = float(self.p.deadline_s)
        if self.budget.next_config() is None:   # paused; now and then it lets the smallest plan measure again
            return self._drop(job, f"planning {self.budget.describe()}")
        age_s = (self.now_ns() - job.stamp_ns) / 1e9
        budget_s = deadline_s - age_s - self._decode_reserve_s
        if budget_s <= 0:
            return self._drop(job, f"observation already {age_s * 1e3:.0f} ms old at start "
                                   f"(+{self._decode_reserve_s * 1e3:.0f} ms decode reserve)")
        result = self.planner.plan(job.observation, base_seed=int(self.p.seed), deadline=budget_s)
        ready_s = (self.now_ns() - job.stamp_ns) / 1e9
        if self.budget.record(self.planner.config, result.timings["total"], result.timed_out):
            self.get_logger().info(f"planning {self.budget.describe()} (measured {self.budget.slowdown:.2f} x the "
                                   "predicted time)")
            self._use_plan()
        self.last_timings = {"wait": (job.picked_ns - job.stamp_ns) / 1e9, **result.timings}
        self.counters["candidates_scored"] += result.num_scored
        if result.chunk is None:
            return self._drop(job, f"no candidate scored within the {budget_s * 1e3:.0f} ms search budget")
        if ready_s > deadline_s:
            return self._drop(job, f"ready {ready_s * 1e3:.0f} ms after its observation "
                                   f"({result.num_scored}/{result.num_candidates} candidates)")
        chunk = result.chunk
        self._pubs["chunk"].publish(chunk_to_msg(chunk.actions, job.stamp_ns, self._step_ns))
        self.latency.add((self.now_ns() - job.stamp_ns) / 1e9)
        self.counters["plans_published"] += 1
        self._pubs["value"].publish(Float32(data=float(chunk.value)))
        self._pubs["marker"].publish(value_marker(chunk.value, job.stamp_ns, label="plan", marker_id=1))
        for cam, image in (chunk.future_images or {}).items():
            self._pubs[cam].publish(np.ascontiguousarray(image), job.stamp_ns, frame_id=cam)
        self.get_logger().info(
            f"plan {self.counters['plans_published']}: candidate {result.best_index} of "
            f"{result.num_scored}/{result.num_candidates} scored, value {chunk.value:.3f}, ready {ready_s * 1e3:.0f} ms "
            f"after the observation (deadline {deadline_s * 1e3:.0f}; "
            + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in self.last_timings.items()) + " ms)")
        return job.stamp_ns

    def diagnostic_values(self) -> dict[str, str]:
        values = super().diagnostic_values()
        if self.budget is not None:
            values.update(self.budget.status())
        return values

    def diagnostic_status(self) -> tuple[int, str, dict[str, str]]:
        level, message, values = super().diagnostic_status()
        if level == DiagnosticStatus.OK and self.budget is not None and self.budget.paused:
            return DiagnosticStatus.WARN, "planning paused: no plan fits deadline_s", values
        return level, message, values

    def _drop(self, job: Job, why: str) -> None:
        self.counters["plans_dropped"] += 1
        self.get_logger().warning(f"plan dropped (deadline {float(self.p.deadline_s) * 1e3:.0f} ms): {why}",
                                  throttle_duration_sec=2.0)
        return None


def main(argv: list[str] | None = None) -> int:
    return run_node(PlannerNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
