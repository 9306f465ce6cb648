"""Times the Wan2.1 VAE encode of one ALOHA clip (41 frames, 224x224) per preset; prints and writes JSON.

Random weights (the speed does not depend on them). Example: `.venv/bin/python benchmarks/vae_encode.py --repeats 1`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

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
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
