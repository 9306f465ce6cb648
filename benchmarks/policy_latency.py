"""Per-chunk latency of CosmosPolicy on CPU: 1 and 10 denoising steps, torch eager vs ONNX Runtime, with a stage breakdown.

Random weights (latency does not depend on them). Prints a table of medians and writes JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cosmos_policy_core.engines.export import export_checkpoint
from cosmos_policy_core.nn.config import ModelConfig
from cosmos_policy_core.runtime.policy import TIMING_KEYS, CosmosPolicy
from cosmos_policy_core.testing import build_random_checkpoint, random_observation

CONFIGS = {
    "tiny": ModelConfig.tiny,
    # 8 blocks x 256 wide, T5-sized context: a CPU-feasible stand-in between tiny and the 2B preset
    "mid": lambda: ModelConfig(model_channels=256, num_blocks=8, num_heads=4, adaln_lora_dim=64,
                               crossattn_emb_channels=1024),
}


def measure(policy: CosmosPolicy, obs, steps: int, repeats: int, decode: bool) -> dict:
    runs = []
    for r in range(repeats + 1):  # first run is warm-up
        chunk = policy.act(obs, seed=r, num_steps=steps, return_future_images=decode)
        if r:
            runs.append(chunk.timings)
    med = {k: statistics.median(t[k] for t in runs) for k in TIMING_KEYS}
    med["total"] = statistics.median(sum(t[k] for k in TIMING_KEYS) for t in runs)
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", nargs="+", default=["tiny", "mid"], choices=sorted(CONFIGS))
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode", action="store_true", help="also decode the predicted frames (slow on CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            ckpt = build_random_checkpoint(Path(tmp) / name, model_config=CONFIGS[name](), image_size=args.image_size)
            obs = random_observation(stats=None, seed=1)
            for engine in args.engines:
                kwargs = {}
                if engine == "onnx":
                    t0 = time.perf_counter()
                    export_checkpoint(ckpt, Path(tmp) / f"{name}_onnx", batch=1, validate=False)
                    print(f"[{name}] ONNX export: {time.perf_counter() - t0:.1f} s")
                    kwargs = dict(engine="onnx", export_dir=Path(tmp) / f"{name}_onnx")
                policy = CosmosPolicy.from_checkpoint(ckpt, **kwargs)
                for steps in args.steps:
                    med = measure(policy, obs, steps, args.repeats, args.decode)
                    rows.append({"config": name, "engine": engine, "steps": steps, **med})
                    print(f"[{name}] {engine:5s} steps={steps:2d} " + " ".join(f"{k}={v * 1e3:.0f}ms" for k, v in med.items()),
                          flush=True)
    info = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "image_size": args.image_size, "repeats": args.repeats, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
