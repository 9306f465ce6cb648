"""Policy chunk latency while a planner shares the device and the weights in one process: alone, beside a planner
that plans non-stop, and beside the same planner under `PolicyFirst` (it waits during the policy's chunks; on a GPU
the policy's kernels also go to the highest-priority stream).

Prints p50 / p95 / max chunk latency per mode and the plans the planner finished. Example (CPU, random tiny
checkpoint): `.venv/bin/python benchmarks/policy_planner_sharing.py`; on a GPU: `--device cuda --checkpoint DIR`.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.runtime.planner import BestOfNPlanner, PlannerConfig, PolicyFirst
from cosmos_policy_core.runtime.policy import CosmosPolicy
from cosmos_policy_core.testing import build_random_checkpoint, random_observation


def chunk_latencies(policy: CosmosPolicy, obs, chunks: int, period_s: float, steps: int,
                    first: PolicyFirst | None) -> list[float]:
    """Seconds per chunk (encode + sample + postprocess), one chunk every `period_s`."""
    out = []
    for i in range(chunks):
        t0 = time.perf_counter()
        if first is None:
            policy.act(obs, seed=i, num_steps=steps, return_future_images=False)
        else:
            with first.policy_turn():
                policy.act(obs, seed=i, num_steps=steps, return_future_images=False)
        if policy.device.type == "cuda":
            torch.cuda.synchronize(policy.device)
        out.append(time.perf_counter() - t0)
        time.sleep(max(0.0, period_s - out[-1]))
    return out


def run_mode(policy, obs, args, mode: str) -> dict:
    first = PolicyFirst(policy.device) if mode == "policy_first" else None
    stop = threading.Event()
    plans = []

    def plan_forever() -> None:
        planner = BestOfNPlanner(policy, PlannerConfig(num_candidates=args.candidates, action_steps=args.plan_steps,
                                                       world_model_samples=1, value_samples=1),
                                 policy_first=first)
        while not stop.is_set():
            t0 = time.perf_counter()
            planner.plan(obs, base_seed=len(plans))
            plans.append(time.perf_counter() - t0)

    worker = threading.Thread(target=plan_forever, daemon=True) if mode != "alone" else None
    if worker:
        worker.start()
        time.sleep(args.period)   # the planner is busy before the first chunk
    latencies = chunk_latencies(policy, obs, args.chunks, args.period, args.steps, first)
    stop.set()
    if worker:
        worker.join()
    q = np.quantile(latencies, [0.5, 0.95])
    return {"mode": mode, "p50_ms": q[0] * 1e3, "p95_ms": q[1] * 1e3, "max_ms": max(latencies) * 1e3,
            "plans": len(plans), "plan_median_s": statistics.median(plans) if plans else None,
            "planner_waited_s": first.planner_waited_s if first else None, "latencies_s": latencies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: a random tiny checkpoint at 64x64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--period", type=float, default=0.5, help="seconds between chunk starts")
    ap.add_argument("--steps", type=int, default=1, help="denoising steps of the policy's chunk")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--plan-steps", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or build_random_checkpoint(Path(tmp) / "tiny", image_size=64, text_len=16)
        policy = CosmosPolicy.from_checkpoint(path, device=args.device)
    obs = random_observation(policy.layout, stats=policy.stats, task=policy.known_tasks[0])
    policy.act(obs, num_steps=args.steps, return_future_images=False)   # warm-up
    rows = [run_mode(policy, obs, args, mode) for mode in ("alone", "beside_planner", "policy_first")]
    for r in rows:
        print(f"{r['mode']:15s} chunk p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms"
              f"  plans {r['plans']}" + (f" (median {r['plan_median_s']:.2f} s)" if r["plans"] else "")
              + (f"  planner waited {r['planner_waited_s']:.2f} s" if r["planner_waited_s"] is not None else ""))
    info = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
            "torch_threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
