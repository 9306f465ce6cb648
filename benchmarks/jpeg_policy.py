"""What JPEG does to the policy: actions on the same observations, raw frames against JPEG round-trips.

Observations are 480x640 frames of scripted transfer-cube demos (every --every steps of each seed), as the
cameras publish them. For each one the checkpoint's chunk is computed from the raw frames and from the
frames after a JPEG encode + decode at each quality, with the same noise seed; the chunk of the raw frames
with the next noise seed gives the scale of the policy's own sampling spread. Also the JPEG size and the
encode / decode time per frame. Prints a table, writes JSON with --out.

    MUJOCO_GL=egl python benchmarks/jpeg_policy.py --checkpoint models/aloha_sim_transfer_cube_small
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.runtime.jpeg import decode_jpeg, encode_jpeg
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation, policy_config_for
from cosmos_policy_core.sim.demos import DemoGenerator
from cosmos_policy_core.sim.tasks import get_task


def observations(task: str, seeds: list[int], every: int) -> list[tuple[int, int, dict, np.ndarray]]:
    """(seed, step, images, qpos) every `every` steps of the scripted demo of each seed, 480x640."""
    out = []
    with DemoGenerator(task) as demos:
        for seed in seeds:
            episode = demos.generate(seed).episode
            for step in range(0, len(episode.qpos), every):
                images = {cam: frames[step] for cam, frames in episode.images.items()}
                out.append((seed, step, images, episode.qpos[step]))
    return out


def chunk(policy: CosmosPolicy, images: dict, qpos: np.ndarray, task: str, seed: int) -> np.ndarray:
    obs = Observation(images=images, proprio=qpos, task=task, timestamp=0.0)
    return np.asarray(policy.act(obs, seed=seed, return_future_images=False).actions, dtype=np.float64)


def difference(a: np.ndarray, b: np.ndarray) -> dict:
    """max / mean |a - b| over the chunk (rad for arm joints, normalised for grippers) and at its first step."""
    d = np.abs(a - b)
    arms = np.r_[0:6, 7:13]
    return {"max": float(d.max()), "mean": float(d.mean()), "first_step_max": float(d[0].max()),
            "arm_max_rad": float(d[:, arms].max()), "gripper_max": float(d[:, [6, 13]].max())}


def summarize(rows: list[dict]) -> dict:
    return {"max": max(r["max"] for r in rows), "mean": float(np.mean([r["mean"] for r in rows])),
            "first_step_max": max(r["first_step_max"] for r in rows),
            "arm_max_rad": max(r["arm_max_rad"] for r in rows), "gripper_max": max(r["gripper_max"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="models/aloha_sim_transfer_cube_small")
    ap.add_argument("--task", default="transfer_cube")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002])
    ap.add_argument("--every", type=int, default=20, help="control steps between observations of a demo")
    ap.add_argument("--qualities", type=int, nargs="+", default=[75, 90, 95])
    ap.add_argument("--noise-seed", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    policy = CosmosPolicy.from_checkpoint(args.checkpoint, config=policy_config_for(args.checkpoint))
    task = get_task(args.task).description
    obs = observations(args.task, args.seeds, args.every)
    per_quality = {q: {"diff": [], "bytes": [], "encode_ms": [], "decode_ms": []} for q in args.qualities}
    sampling = []
    t0 = time.perf_counter()
    for seed, step, images, qpos in obs:
        raw = chunk(policy, images, qpos, task, args.noise_seed)
        sampling.append(difference(raw, chunk(policy, images, qpos, task, args.noise_seed + 1)))
        for q in args.qualities:
            stats = per_quality[q]
            decoded = {}
            for cam, image in images.items():
                t = time.perf_counter()
                data = encode_jpeg(image, q)
                t_enc = time.perf_counter()
                decoded[cam] = decode_jpeg(data)
                stats["encode_ms"].append((t_enc - t) * 1e3)
                stats["decode_ms"].append((time.perf_counter() - t_enc) * 1e3)
                stats["bytes"].append(int(data.size))
            stats["diff"].append(difference(raw, chunk(policy, decoded, qpos, task, args.noise_seed)))
        print(f"seed {seed} step {step}: " + ", ".join(f"q{q} max {s['diff'][-1]['max']:.4f}"
                                                      for q, s in per_quality.items()), flush=True)
    result = {
        "checkpoint": args.checkpoint, "observations": len(obs), "seeds": args.seeds, "every": args.every,
        "frame_shape": list(obs[0][2]["cam_high"].shape), "raw_bytes": int(np.prod(obs[0][2]["cam_high"].shape)),
        "noise_seed": args.noise_seed, "seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "sampling_spread": summarize(sampling),
        "jpeg": {q: {**summarize(s["diff"]), "bytes_mean": float(np.mean(s["bytes"])),
                     "encode_ms_p50": float(np.median(s["encode_ms"])),
                     "decode_ms_p50": float(np.median(s["decode_ms"]))} for q, s in per_quality.items()},
    }
    print(f"{len(obs)} observations, {result['frame_shape']} frames ({result['raw_bytes']} bytes raw)")
    print("| frames | bytes / frame | action diff max | mean | first step max | encode / decode ms |")
    print("|---|---:|---:|---:|---:|---|")
    for q, r in result["jpeg"].items():
        print(f"| JPEG {q} vs raw, same noise | {r['bytes_mean']:.0f} | {r['max']:.4f} | {r['mean']:.5f} | "
              f"{r['first_step_max']:.4f} | {r['encode_ms_p50']:.1f} / {r['decode_ms_p50']:.1f} |")
    s = result["sampling_spread"]
    print(f"| raw, noise seed {args.noise_seed} vs {args.noise_seed + 1} | - | {s['max']:.4f} | {s['mean']:.5f} | "
          f"{s['first_step_max']:.4f} | - |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
