"""Times the Wan2.1 VAE encode of one ALOHA clip (41 frames, 224x224) per preset, and what encoding only the
conditioning frames saves the policy: the encode time ratio (truncated / whole clip) and a whole chunk before / after.

Random weights (the speed does not depend on them); prints and writes JSON. Example:
`.venv/bin/python benchmarks/vae_encode.py --presets tiny --policy-repeats 5` (the policy part uses the tiny
checkpoint of `cosmos_policy_core.testing` at 224x224, or `--checkpoint DIR`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.nn.wan_vae import VAEConfig, WanVAE

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_encode(preset: str, frames: int, size: int, repeats: int, chunk_frames: int | None,
                dtype: torch.dtype, device: str) -> dict:
    config = getattr(VAEConfig, preset)()
    torch.manual_seed(0)
    vae = WanVAE(config).eval().to(device=device, dtype=dtype)
    video = (torch.rand(1, 3, frames, size, size, device=device) * 2 - 1).to(dtype)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # Warm-up on the first frame only: allocator and kernel selection without paying for a full clip.
    vae.encode(video[:, :, :1], chunk_frames=chunk_frames)
    sync()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        z = vae.encode(video, chunk_frames=chunk_frames)
        sync()
        times.append(time.perf_counter() - start)
        # Process CPU time (all threads): on a shared machine it shows the work when wall time shows the queue.
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "preset": preset,
        "params": sum(p.numel() for p in vae.parameters()),
        "input_shape": list(video.shape),
        "latent_shape": list(z.shape),
        "chunk_frames": chunk_frames,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "repeats": repeats,
        "seconds": times,
        "median_s": statistics.median(times),
        "cpu_seconds": cpu_times,
        "load_avg_1m_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def compare_policy_encode(checkpoint: Path | None, repeats: int, steps: int) -> dict:
    """Truncated (the default) vs whole-clip encode in the policy, interleaved so both see the same machine load.

    Per repeat: `encode_observation` (its vae_encode time), then a whole chunk (`act`, `steps` denoising steps)
    without and with the decode of the predicted frames (which encodes the two restored slots lazily). Wall
    seconds and process CPU seconds (all threads; on a shared machine they show the work when wall time shows
    the queue).
    """
    from cosmos_policy_core.runtime.policy import CosmosPolicy
    from cosmos_policy_core.testing import build_random_checkpoint, random_observation

    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint or build_random_checkpoint(Path(tmp) / "tiny224", text_len=16)
        policy = CosmosPolicy.from_checkpoint(path)
    policies = {"truncated": policy, "whole_clip": policy.with_config(vae_encode_whole_clip=True)}
    obs = random_observation(policy.layout, stats=policy.stats, task=policy.known_tasks[0], seed=1)
    same_actions = True
    stages = ("vae_encode", "chunk", "chunk_with_decode")
    runs = {name: {f"{k}{unit}": [] for k in stages for unit in ("", "_cpu")} for name in policies}

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - wall, time.process_time() - cpu

    for r in range(repeats + 1):  # the first round warms up
        actions = []
        for name, pol in policies.items():
            cond, _, encode_cpu = timed(lambda: pol.encode_observation(obs))
            chunk, wall, cpu = timed(lambda: pol.act(obs, seed=r, num_steps=steps, return_future_images=False))
            _, wall_decode, cpu_decode = timed(lambda: pol.act(obs, seed=r, num_steps=steps, return_future_images=True))
            actions.append(chunk.actions)
            if r:
                for key, value in (("vae_encode", cond.timings["vae_encode"]), ("vae_encode_cpu", encode_cpu),
                                   ("chunk", wall), ("chunk_cpu", cpu), ("chunk_with_decode", wall_decode),
                                   ("chunk_with_decode_cpu", cpu_decode)):
                    runs[name][key].append(value)
        same_actions &= bool(np.array_equal(actions[0], actions[1]))
    med = {name: {k: statistics.median(v) for k, v in stage.items()} for name, stage in runs.items()}
    lay = policy.layout
    return {
        "checkpoint": str(checkpoint) if checkpoint else "random tiny (cosmos_policy_core.testing) at 224x224",
        "image_size": lay.image_size, "pixel_frames": lay.num_pixel_frames, "steps": steps, "repeats": repeats,
        "median_s": med, "runs_s": runs, "same_actions": same_actions,
        "encode_ratio": med["truncated"]["vae_encode"] / med["whole_clip"]["vae_encode"],
        "encode_ratio_cpu": med["truncated"]["vae_encode_cpu"] / med["whole_clip"]["vae_encode_cpu"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "wan21"], choices=["tiny", "wan21"])
    parser.add_argument("--frames", type=int, default=41)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1, help="timed encodes per preset (after a 1-frame warm-up)")
    parser.add_argument("--tiny-repeats", type=int, default=5, help="timed encodes for the tiny preset")
    parser.add_argument("--chunk-frames", type=int, default=4, help="frames per chunk after the first; 0 = one pass")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--policy-repeats", type=int, default=5,
                        help="rounds of the truncated vs whole-clip comparison in the policy (0: skip it)")
    parser.add_argument("--policy-steps", type=int, default=1, help="denoising steps of the compared chunks")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint directory for the policy comparison (default: a random tiny one at 224x224)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vae_encode.json"))
    args = parser.parse_args()

    chunk_frames = args.chunk_frames or None
    results = []
    with torch.inference_mode():
        for preset in args.presets:
            repeats = args.tiny_repeats if preset == "tiny" else args.repeats
            result = time_encode(preset, args.frames, args.size, repeats, chunk_frames, DTYPES[args.dtype],
                                 args.device)
            results.append(result)
            print(f"{preset:6s} {result['params'] / 1e6:7.2f}M params  {result['input_shape']} -> "
                  f"{result['latent_shape']}  {args.dtype} {args.device}  median {result['median_s']:.3f} s "
                  f"over {repeats} (all: {', '.join(f'{t:.3f}' for t in result['seconds'])}; "
                  f"process CPU s: {', '.join(f'{t:.1f}' for t in result['cpu_seconds'])})")
    policy = None
    if args.policy_repeats > 0 and args.device == "cpu" and args.dtype == "fp32":
        with torch.inference_mode():
            policy = compare_policy_encode(args.checkpoint, args.policy_repeats, args.policy_steps)
        m, trunc, whole = policy["median_s"], "truncated", "whole_clip"
        print(f"policy encode, truncated / whole clip: {policy['encode_ratio']:.2f} wall, "
              f"{policy['encode_ratio_cpu']:.2f} process CPU ({m[trunc]['vae_encode']:.3f} s vs "
              f"{m[whole]['vae_encode']:.3f} s wall, median of {args.policy_repeats}; {policy['image_size']}px, "
              f"12 vs 36 pixel frames after the cached prefix)")
        for key, what in (("chunk", "whole chunk"), ("chunk_with_decode", "whole chunk + decoded frames")):
            print(f"{what} ({args.policy_steps} step): before {m[whole][key]:.3f} s, after {m[trunc][key]:.3f} s "
                  f"wall (process CPU {m[whole][key + '_cpu']:.2f} s -> {m[trunc][key + '_cpu']:.2f} s)")
        print(f"same actions: {policy['same_actions']}")
    report = {
        "benchmark": "vae_encode",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "results": results,
        "policy": policy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
