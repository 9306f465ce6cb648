"""Best-of-N planning time on CPU, two measurements.

`--deadline S` (with `--checkpoint DIR`, e.g. models/aloha_sim_transfer_cube_small): what the planner node does at
configure and while running. It measures the plan's costs, prints the plan it chooses for the deadline (the node's
defaults are the most) and the requested plan's predicted time, then runs `--plans` plans, each with the plan the
budget chooses after the previous one was timed, and prints every plan's time and whether it met the deadline.

`--graph SECONDS`: the sim graph with the planner (`cosmos-aloha bringup --sim --planner`, the demo's settings:
224x224 cameras, 1 denoising step, no predicted frames), watched from this process: plans published and dropped
(the planner's own counters), plan chunks received, the plan the budget chose, how often the executor was playing a
planner chunk (its status, sampled), and whether the sim task succeeded.

Without `--deadline` or `--graph`: batched candidates on one cached encode vs the reference's way (one by one,
re-encoding), on a random checkpoint with the same seeds; prints both times and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.runtime.plan_budget import PlanBudget, describe_plan, measure_plan_costs
from cosmos_policy_core.runtime.planner import BestOfNPlanner, PlannerConfig
from cosmos_policy_core.runtime.policy import CosmosPolicy
from cosmos_policy_core.testing import build_random_checkpoint, random_observation


def reference_way(policy: CosmosPolicy, obs, cfg: PlannerConfig, base_seed: int) -> tuple[int, list[float]]:
    """deploy.py's serial loop: per candidate, re-encode the observation and run every call at batch 1."""
    one = BestOfNPlanner(policy, PlannerConfig(**{**cfg.__dict__, "num_candidates": 1, "batch_candidates": 1}))
    values = []
    for i in range(cfg.num_candidates):
        cond = policy.encode_observation(obs)           # the reference re-encodes for every candidate
        r = one.plan(cond, base_seed=base_seed + i)
        values.append(r.candidates[0].value)
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best, values


def batched_vs_reference(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_random_checkpoint(Path(tmp) / "tiny", image_size=args.image_size)
        policy = CosmosPolicy.from_checkpoint(ckpt)
    obs = random_observation(policy.layout, stats=policy.stats, seed=2)
    cfg = PlannerConfig(num_candidates=args.candidates, action_steps=args.action_steps,
                        aggregation=args.aggregation, batch_candidates=args.candidates)
    policy.act(obs, num_steps=1, return_future_images=False)  # warm-up
    t0 = time.perf_counter()
    batched = BestOfNPlanner(policy, cfg).plan(obs, base_seed=195)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_best, ref_values = reference_way(policy, obs, cfg, 195)
    t_ref = time.perf_counter() - t0
    nfe = args.action_steps + sum(cfg.world_model_steps) + len(cfg.world_model_steps) * sum(
        1 if s == 2 else s for s in cfg.value_steps)
    return {
        "candidates": args.candidates, "image_size": args.image_size, "nfe_per_candidate": nfe,
        "batched_s": t_batched, "reference_way_s": t_ref, "speedup": t_ref / t_batched,
        "same_winner": batched.best_index == ref_best,
        "max_value_diff": float(np.max(np.abs(np.array([c.value for c in batched.candidates]) - ref_values))),
        "batched_timings": batched.timings,
    }


def plans_within_deadline(args) -> dict:
    """The planner node's budget, outside ROS: measure, choose, plan, re-measure."""
    policy = CosmosPolicy.from_checkpoint(args.checkpoint)
    obs = random_observation(policy.layout, stats=policy.stats, task=policy.known_tasks[0], seed=3)
    requested = PlannerConfig(return_future_images=True)   # the planner node's defaults (config/planner.yaml)
    t0 = time.perf_counter()
    costs = measure_plan_costs(policy, obs, requested)
    measure_s = time.perf_counter() - t0
    budget = PlanBudget(costs, requested, args.deadline)
    print(f"costs measured in {measure_s:.1f} s: encode {costs.encode_s * 1e3:.0f} ms, decode "
          f"{costs.decode_s * 1e3:.0f} ms, one network evaluation "
          + ", ".join(f"{r} rows {t * 1e3:.0f} ms" for r, t in costs.eval_s["policy"].items()), flush=True)
    print(f"requested ({describe_plan(requested)}): predicted {costs.plan_seconds(requested):.2f} s", flush=True)
    print(f"deadline_s {args.deadline:g}: planning {budget.describe()}", flush=True)
    plans = []
    for i in range(args.plans):
        config = budget.next_config()
        if config is None:
            print(f"plan {i}: none ({budget.describe()})")
            plans.append({"config": None})
            continue
        # the node's search deadline: the decode's predicted time (x1.5) is kept out of it
        search = args.deadline - 1.5 * (costs.plan_seconds(config)
                                        - costs.plan_seconds(replace(config, return_future_images=False)))
        wall, cpu = time.perf_counter(), time.process_time()
        result = BestOfNPlanner(policy, config).plan(obs, base_seed=i, deadline=search)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        predicted = costs.plan_seconds(config) * budget.slowdown
        changed = budget.record(config, result.timings["total"], result.timed_out)
        plans.append({"config": describe_plan(config), "seconds": wall, "cpu_seconds": cpu, "predicted_s": predicted,
                      "timed_out": result.timed_out, "scored": result.num_scored,
                      "in_time": result.chunk is not None and wall <= args.deadline, "slowdown_after": budget.slowdown})
        print(f"plan {i}: {describe_plan(config)}: {wall:.2f} s (process CPU {cpu:.2f} s, predicted {predicted:.2f} s)"
              f", {result.num_scored}/{config.num_candidates} scored, "
              + ("in time" if plans[-1]["in_time"] else "LATE")
              + (f"; now planning {budget.describe()}" if changed else ""), flush=True)
    timed = [p for p in plans if p.get("seconds") is not None]
    return {
        "checkpoint": str(args.checkpoint), "deadline_s": args.deadline, "measure_s": measure_s,
        "costs": {"encode_s": costs.encode_s, "decode_s": costs.decode_s,
                  "eval_s": {m: {str(r): t for r, t in tab.items()} for m, tab in costs.eval_s.items()}},
        "requested": describe_plan(requested), "requested_predicted_s": costs.plan_seconds(requested),
        "chosen_first": plans[0].get("config") if plans else None, "plans": plans,
        "in_time": sum(p["in_time"] for p in timed), "median_s": float(np.median([p["seconds"] for p in timed]))
        if timed else None,
    }


CLI = "import sys; from cosmos_policy_core.cli import main; sys.exit(main())"


def planner_in_the_graph(args) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Bool
    from trajectory_msgs.msg import JointTrajectory

    from cosmos_aloha import topics
    from cosmos_aloha.qos import profile

    bringup = subprocess.Popen(
        [sys.executable, "-c", CLI, "bringup", "--sim", "--checkpoint", str(args.checkpoint),
         "--planner", "--seed", str(args.seed), "--image-height", "224", "--image-width", "224",
         "--arg", "predicted_images:=false", "--arg", "denoising_steps:=1", "--seconds", f"{args.graph + 90:g}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("planner_graph_benchmark")
    seen = {"plan_chunks": 0, "policy_chunks": 0, "executor_samples": 0, "executor_on_planner": 0,
            "success": False}
    planner: dict[str, str] = {}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name == "cosmos_aloha/executor" and status.message in ("playing", "blending"):
                seen["executor_samples"] += 1
                seen["executor_on_planner"] += values.get("source") == "planner"
            elif status.name == "cosmos_aloha/planner":
                planner.update(values)

    def count(key: str):
        return lambda _msg: seen.__setitem__(key, seen[key] + 1)

    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS.name, on_diagnostics, profile(topics.DIAGNOSTICS))
    node.create_subscription(JointTrajectory, topics.PLAN_CHUNK.name, count("plan_chunks"), profile(topics.PLAN_CHUNK))
    node.create_subscription(JointTrajectory, topics.ACTION_CHUNK.name, count("policy_chunks"),
                             profile(topics.ACTION_CHUNK))
    node.create_subscription(Bool, topics.SIM_SUCCESS.name, lambda m: seen.__setitem__("success", bool(m.data)),
                             profile(topics.SIM_SUCCESS))
    start = time.monotonic()
    # Until the planner plans (its load and cost measurement take a minute or more on a CPU), then `--graph` s.
    while time.monotonic() - start < 240 and planner.get("lifecycle_state") != "active" and bringup.poll() is None:
        rclpy.spin_once(node, timeout_sec=0.1)
    for key in seen:
        seen[key] = False if key == "success" else 0
    first = {k: int(planner.get(k, 0)) for k in ("plans_published", "plans_dropped")}
    end = time.monotonic() + args.graph
    while time.monotonic() < end and bringup.poll() is None:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()
    bringup.send_signal(signal.SIGINT)
    log, _ = bringup.communicate(timeout=60)
    if not planner:
        raise SystemExit(f"the planner never reported; the bringup's output ends:\n{log[-3000:]}")
    result = {
        "seconds": args.graph, "seed": args.seed, **seen,
        "plans_published": int(planner.get("plans_published", 0)) - first["plans_published"],
        "plans_dropped": int(planner.get("plans_dropped", 0)) - first["plans_dropped"],
        "plan": planner.get("plan"), "planner_latency_ms_p50": planner.get("latency_ms_p50"),
        "planner_latency_ms_p99": planner.get("latency_ms_p99"), "planning": planner.get("planning"),
        "bringup_exit": bringup.returncode, "log_tail": log[-2000:],
    }
    share = result["executor_on_planner"] / max(result["executor_samples"], 1)
    print(f"{args.graph:g} s of the sim graph with the planner: {result['plans_published']} plans published, "
          f"{result['plans_dropped']} dropped ({result['plan']}; planner latency p50 {result['planner_latency_ms_p50']}"
          f" ms p99 {result['planner_latency_ms_p99']} ms); executor on a planner chunk in "
          f"{result['executor_on_planner']} of {result['executor_samples']} status samples ({share:.0%}); "
          f"sim task {'SUCCESS' if result['success'] else 'not solved'}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deadline", type=float, default=None, help="seconds: run the planner node's budget")
    ap.add_argument("--checkpoint", type=Path, default=Path("models/aloha_sim_transfer_cube_small"))
    ap.add_argument("--plans", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--action-steps", type=int, default=10)
    ap.add_argument("--aggregation", default="majority_mean")
    ap.add_argument("--graph", type=float, default=None, help="seconds: run the sim graph with the planner")
    ap.add_argument("--seed", type=int, default=0, help="--graph: the sim scene")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.graph is not None:
        result = planner_in_the_graph(args)
    elif args.deadline is not None:
        result = plans_within_deadline(args)
    else:
        result = batched_vs_reference(args)
    result["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
