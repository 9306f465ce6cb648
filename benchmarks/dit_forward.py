"""Times our CosmosDiT forward against diffusers' CosmosTransformer3DModel with the same weights; prints and writes JSON.

ALOHA shape (16 x 11 x 28 x 28 latents = 2,156 tokens, 512 context tokens) at a mid-size width; runs interleaved
in one process. Example: `.venv/bin/python benchmarks/dit_forward.py --blocks 4 --repeats 5`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from cosmos_policy_core.nn.config import ModelConfig
from cosmos_policy_core.nn.diffusers_compat import diffusers_twin
from cosmos_policy_core.nn.dit import CosmosDiT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_inputs(config: ModelConfig, batch: int, frames: int, latent_hw: int, context_tokens: int,
                 dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch, 1, frames, latent_hw, latent_hw)
    mask[:, :, :5] = 1  # policy mode: blank, proprio and the three current images are conditioning
    timesteps = torch.full((batch, frames), 0.8)
    timesteps[:, :5] = 0.0  # conditioning frames get sigma 0
    tensors = {
        "x": torch.randn(batch, config.in_channels, frames, latent_hw, latent_hw, generator=g),
        "t": timesteps,
        "context": torch.randn(batch, context_tokens, config.crossattn_emb_channels, generator=g),
        "mask": mask,
        "padding": torch.zeros(1, 1, latent_hw * 8, latent_hw * 8),
    }
    return {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=11)
    parser.add_argument("--latent-hw", type=int, default=28)
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/dit_forward.json"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    config = dataclasses.replace(ModelConfig.cosmos_predict2_2b(), model_channels=args.channels,
                                 num_blocks=args.blocks, num_heads=args.heads)
    torch.manual_seed(0)
    ours = CosmosDiT(config).eval()
    with torch.no_grad():  # non-zero AdaLN up-projections, so both networks do all of their work
        for name, p in ours.named_parameters():
            if "adaln_modulation" in name and name.endswith(".2.weight"):
                p.normal_(0, 0.02)
    theirs = diffusers_twin(config, ours.state_dict())
    ours.to(device=args.device, dtype=dtype)
    theirs.to(device=args.device, dtype=dtype)
    inp = build_inputs(config, args.batch, args.frames, args.latent_hw, args.context_tokens, dtype, args.device)
    B, T = args.batch, args.frames

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # Two timestep forms: per frame (B, T) as Cosmos Policy uses it, and one timestep per sample (B,).
    runs = {
        ("per_frame", "ours"): lambda: ours(inp["x"], inp["t"], inp["context"], inp["mask"], inp["padding"]),
        ("per_frame", "diffusers"): lambda: theirs(inp["x"], inp["t"].view(B, 1, T, 1, 1), inp["context"],
                                                   condition_mask=inp["mask"], padding_mask=inp["padding"],
                                                   return_dict=False)[0],
        ("per_sample", "ours"): lambda: ours(inp["x"], inp["t"][:, -1], inp["context"], inp["mask"], inp["padding"]),
        ("per_sample", "diffusers"): lambda: theirs(inp["x"], inp["t"][:, -1], inp["context"],
                                                    condition_mask=inp["mask"], padding_mask=inp["padding"],
                                                    return_dict=False)[0],
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    with torch.inference_mode():
        for key, run in runs.items():
            for _ in range(args.warmup):
                outputs[key] = run()
        sync()
        for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                sync()
                times[key].append(time.perf_counter() - start)

    tokens = args.frames * (args.latent_hw // config.patch_spatial) ** 2
    rows = []
    print(f"CosmosDiT vs diffusers CosmosTransformer3DModel | D={config.model_channels} blocks={config.num_blocks} "
          f"heads={config.num_heads} | B={B} latents {config.in_channels}x{T}x{args.latent_hw}x{args.latent_hw} "
          f"({tokens} tokens), context {args.context_tokens} | {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'timesteps':<11} {'ours ms':>9} {'diffusers ms':>13} {'diffusers/ours':>15} {'max |diff|':>11}")
    for form in ("per_frame", "per_sample"):
        ours_ms = statistics.median(times[(form, "ours")]) * 1e3
        theirs_ms = statistics.median(times[(form, "diffusers")]) * 1e3
        diff = (outputs[(form, "ours")].float() - outputs[(form, "diffusers")].float()).abs().max().item()
        rows.append({"timesteps": form, "ours_median_ms": ours_ms, "diffusers_median_ms": theirs_ms,
                     "speedup": theirs_ms / ours_ms, "max_abs_diff": diff,
                     "ours_ms": [t * 1e3 for t in times[(form, "ours")]],
                     "diffusers_ms": [t * 1e3 for t in times[(form, "diffusers")]]})
        print(f"{form:<11} {ours_ms:>9.1f} {theirs_ms:>13.1f} {theirs_ms / ours_ms:>15.2f} {diff:>11.2e}")

    result = {
        "benchmark": "dit_forward",
        "config": config.to_dict(),
        "params": sum(p.numel() for p in ours.parameters()),
        "batch": B, "frames": T, "latent_hw": args.latent_hw, "tokens": tokens,
        "context_tokens": args.context_tokens, "dtype": args.dtype, "device": args.device,
        "warmup": args.warmup, "repeats": args.repeats,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "processor": platform.processor(),
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
