"""The exported graphs (fp32, fp16, bf16) on ONNX Runtime against eager PyTorch: chunk latency by stage and how far
each precision moves the actions. One run on this machine's CPU; prints a table and writes JSON.

  .venv/bin/python benchmarks/exported_engines.py                       # the shipped checkpoint
  .venv/bin/python benchmarks/exported_engines.py --checkpoint DIR --repeats 20 --json out.json

Rows: torch fp32 (the reference numbers), torch bf16, and engine onnx at each exported precision. The action
difference is the largest |a - a_fp32| over the chunk, as a fraction of each joint's dataset range.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.engines.export import export_checkpoint
from cosmos_policy_core.runtime.policy import CosmosPolicy
from cosmos_policy_core.testing import random_observation

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "aloha_sim_transfer_cube_small"
STAGES = ("preprocess", "vae_encode", "denoise", "postprocess")


def measure(policy: CosmosPolicy, observations, repeats: int, num_steps: int) -> tuple[dict, list[np.ndarray]]:
    """Median ms per stage and of the whole 1-step chunk (no predicted-frame decode); the chunks of one pass."""
    for obs in observations[:2]:    # warm-up
        policy.act(obs, seed=0, num_steps=num_steps, return_future_images=False)
    totals, stages = [], {k: [] for k in STAGES}
    for i in range(repeats):
        obs = observations[i % len(observations)]
        t0 = time.perf_counter()
        chunk = policy.act(obs, seed=i, num_steps=num_steps, return_future_images=False)
        totals.append(time.perf_counter() - t0)
        for k in STAGES:
            stages[k].append(chunk.timings[k])
    actions = [policy.act(obs, seed=7, num_steps=num_steps, return_future_images=False).actions
               for obs in observations]
    return ({"chunk_ms": float(np.median(totals)) * 1e3,
             **{f"{k}_ms": float(np.median(v)) * 1e3 for k, v in stages.items()}}, actions)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=SHIPPED)
    ap.add_argument("--repeats", type=int, default=10, help="timed chunks per row")
    ap.add_argument("--observations", type=int, default=4, help="distinct observations the actions are compared on")
    ap.add_argument("--steps", type=int, default=1, help="denoising steps per chunk")
    ap.add_argument("--precisions", default="fp32,fp16,bf16", help="exported precisions to run on ONNX Runtime")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads of torch and ONNX Runtime alike (default: torch's). On a machine shared "
                         "with other jobs, 1 avoids spinning thread pools")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "exported_engines.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    reference = CosmosPolicy.from_checkpoint(args.checkpoint)
    task = reference.known_tasks[0]
    observations = [random_observation(reference.layout, stats=reference.stats, seed=s, task=task)
                    for s in range(args.observations)]
    span = reference.stats.actions_max - reference.stats.actions_min
    rows = []
    with tempfile.TemporaryDirectory(prefix="exported_engines_") as tmp:
        runs = [("torch", "fp32", {}), ("torch", "bf16", {"dtype": "bf16"})]
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            out = Path(tmp) / precision
            t0 = time.perf_counter()
            manifest = export_checkpoint(args.checkpoint, out, precision=precision)
            print(f"exported {precision} in {time.perf_counter() - t0:.1f} s; parity (max |diff| / range): "
                  + ", ".join(f"{k} {v['same_precision']:.2g} vs torch {precision}, {v.get('vs_fp32', 0):.2g} vs fp32"
                              for k, v in manifest["parity"].items()), flush=True)
            runs.append(("onnx", precision, {"export_dir": out}))
        base_actions = None
        for engine, precision, kwargs in runs:
            policy = CosmosPolicy.from_checkpoint(args.checkpoint, engine=engine, **kwargs)
            timings, actions = measure(policy, observations, args.repeats, args.steps)
            if base_actions is None:
                base_actions = actions
            diff = max(float(np.max(np.abs(a - b) / span)) for a, b in zip(actions, base_actions))
            row = {"engine": engine, "precision": precision, **timings, "max_action_diff_of_range": diff}
            rows.append(row)
            print(f"{engine:6s} {precision:5s} chunk {row['chunk_ms']:8.1f} ms (encode {row['vae_encode_ms']:.1f}, "
                  f"denoise {row['denoise_ms']:.1f}) max action diff {diff:.2e} of range", flush=True)
    checkpoint = args.checkpoint.resolve()
    shown = checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint
    result = {"benchmark": "exported_engines", "checkpoint": str(shown), "num_steps": args.steps,
              "repeats": args.repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "machine": platform.platform(),
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
