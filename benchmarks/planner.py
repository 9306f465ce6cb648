"""Best-of-N planning time on CPU: batched candidates on one cached encode vs the reference's way (one by one, re-encoding).

Both paths run in this process on the same random checkpoint, with the same seeds; prints both times and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--action-steps", type=int, default=10)
    ap.add_argument("--aggregation", default="majority_mean")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
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
    result = {
        "candidates": args.candidates, "image_size": args.image_size, "nfe_per_candidate": nfe,
        "batched_s": t_batched, "reference_way_s": t_ref, "speedup": t_ref / t_batched,
        "same_winner": batched.best_index == ref_best,
        "max_value_diff": float(np.max(np.abs(np.array([c.value for c in batched.candidates]) - ref_values))),
        "batched_timings": batched.timings,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
