"""Can a small DiT learn where the object is? A regression probe of the first action chunk on demo observations.

The policy's hardest decision is the first reach: at a demo's first steps the arms are at rest and only the
object's pose differs, so the first chunk must come from the cameras. This probe isolates that decision from
the diffusion objective: a small `CosmosDiT` from scratch regresses the action frame (no noise on it, the
network's -F read as x0 as at σ → ∞) from the 5 conditioning frames (blank, proprio, 3 cameras, encoded by
the VAE as the trainer builds and encodes its samples) of the selected steps of every demo, and reports, every
`--eval-every` iterations, the R² across scenes of the first `--r2-actions` actions of `--r2-joints`
(0 = the blind mean chunk, 1 = perfect), on the training demos and on `--held-out` ones.

`--contrast-gain k` multiplies each camera latent's deviation from the training samples' mean by k: with only
first frames selected (the default) that scales the object's contrast in the latent, which is what a larger
image size does (see benchmarks/latent_contrast.py and docs/training.md, "Why the first reach is blind").

    .venv/bin/python benchmarks/first_reach_probe.py --data demos --vae models/aloha_sim_transfer_cube_small \
        --image-size 64 --held-out episode_34 episode_35 episode_36 episode_37 episode_38 episode_39 --json probe.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.checkpoint import DatasetStats
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.layout import LatentLayout
from cosmos_policy_core.nn.config import ModelConfig
from cosmos_policy_core.nn.dit import CosmosDiT
from cosmos_policy_core.train.loop import LatentEncoder, assemble_batch
from cosmos_policy_core.train.samples import SampleBuilder, SampleSpec, load_episode_dir
from cosmos_policy_core.train.vae import load_vae


@torch.no_grad()
def encode_samples(episodes, steps: list[int], vae, layout: LatentLayout, stats: DatasetStats,
                   progress: bool = True) -> torch.Tensor:
    """(N, C, T, H, W) policy-sample latents of `steps` of every episode, built, encoded and injected as the
    trainer does (`SampleBuilder`, `LatentEncoder`, `assemble_batch`); episode by episode, step by step."""
    builder, encoder = SampleBuilder(layout, stats, episodes), LatentEncoder(vae, layout)
    no_text = {ep.task: torch.zeros(1, 1, 1) for ep in episodes}  # the probe has its own fixed context
    latents = []
    for i, ep in enumerate(episodes):
        late = [s for s in steps if s >= len(ep)]
        if late:
            raise ConfigError(f"{ep.name} has {len(ep)} steps; step {late[0]} was asked for")
        small = {src: ep.frame(src, 0).shape[:2] for src in layout.camera_sources
                 if min(ep.frame(src, 0).shape[:2]) < layout.image_size}
        if small:
            raise ConfigError(f"{ep.name}: frames {small} are smaller than the image size "
                              f"{layout.image_size}: the probe would measure upsampled images; "
                              "use demos recorded at that size or larger")
        samples = [builder.build(SampleSpec("demo", "policy", i, step)) for step in steps]
        latents.append(assemble_batch(layout, samples, encoder.encode(samples), no_text).x0_B_C_T_H_W)
        if progress:
            print(f"encoded {i + 1}/{len(episodes)} episodes", flush=True)
    return torch.cat(latents)


def r2_across_scenes(pred_N_K_D: torch.Tensor, target_N_K_D: torch.Tensor) -> float:
    """1 - SSE / SS of the targets around their mean over the N samples (0: the mean chunk; < 0: worse)."""
    ss = float(((target_N_K_D - target_N_K_D.mean(0)) ** 2).sum())
    if ss == 0:
        raise ConfigError("the targets are the same in every sample: R² across scenes is undefined")
    return 1.0 - float(((pred_N_K_D - target_N_K_D) ** 2).sum()) / ss


class Probe:
    """The DiT and the regression: conditioning frames clean (timestep 0), every other frame zero (timestep 1)."""

    def __init__(self, layout: LatentLayout, width: int, blocks: int, heads: int, seed: int, patch: int = 2):
        torch.manual_seed(seed)
        self.layout = layout
        self.net = CosmosDiT(ModelConfig(model_channels=width, num_blocks=blocks, num_heads=heads,
                                         adaln_lora_dim=64, crossattn_emb_channels=32, patch_spatial=patch))
        # one fixed context for every sample: the task text carries nothing here
        self.text_1_L_D = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(seed))
        self.n_cond = 2 + len(layout.cameras)  # blank, proprio, cameras: the policy role's conditioning

    def actions(self, x0_B_C_T_H_W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted, target) normalized chunks (B, chunk, action_dim) read from the action frame."""
        lay, n = self.layout, self.n_cond
        B, _, T, H, W = x0_B_C_T_H_W.shape
        x_in = x0_B_C_T_H_W.clone()
        x_in[:, :, n:] = 0
        mask = torch.zeros(B, 1, T, H, W)
        mask[:, :, :n] = 1
        t = torch.ones(B, T)
        t[:, :n] = 0
        out = -self.net(x_in, t, self.text_1_L_D.expand(B, -1, -1), mask)
        k = lay.chunk_size * lay.action_dim
        a = lay.index("action")
        shape = (B, lay.chunk_size, lay.action_dim)
        return (out[:, :, a].reshape(B, -1)[:, :k].reshape(shape),
                x0_B_C_T_H_W[:, :, a].reshape(B, -1)[:, :k].reshape(shape))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="directory of ALOHA HDF5 demos")
    parser.add_argument("--vae", required=True, help="a checkpoint or VAE directory")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[0], help="episode steps to train and score on")
    parser.add_argument("--held-out", nargs="+", default=None,
                        help="episode names held out (default: the last sixth, 2 to 6 episodes, in path order "
                             "as the trainer splits)")
    parser.add_argument("--contrast-gain", type=float, default=1.0)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--patch", type=int, default=2, help="spatial patch (4 at 128² keeps 16 tokens per frame)")
    parser.add_argument("--r2-actions", type=int, default=20)
    parser.add_argument("--r2-joints", type=int, nargs="+", default=[7, 8, 9, 10], help="default: right arm joints 0-3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    episodes = load_episode_dir(args.data)
    names = [ep.name for ep in episodes]
    held_out = set(args.held_out) if args.held_out else set(names[-max(2, min(6, len(names) // 6)):])
    unknown = held_out - set(names)
    if unknown:
        parser.error(f"--held-out names not in {args.data}: {sorted(unknown)}")
    train_eps = [ep for ep in episodes if ep.name not in held_out]
    test_eps = [ep for ep in episodes if ep.name in held_out]
    if len(train_eps) < 2 or len(test_eps) * len(args.steps) < 2:
        parser.error(f"R² across scenes needs 2 samples on each side; got {len(train_eps)} training and "
                     f"{len(test_eps)} held-out episodes at {len(args.steps)} step(s)")
    layout = dataclasses.replace(LatentLayout.aloha(), image_size=args.image_size)
    stats = DatasetStats.from_arrays(np.concatenate([e.action for e in episodes]),
                                     np.concatenate([e.qpos for e in episodes]))
    vae = load_vae(args.vae).eval()
    x_train = encode_samples(train_eps, args.steps, vae, layout, stats)
    x_test = encode_samples(test_eps, args.steps, vae, layout, stats)

    cams = [layout.index(c) for c in layout.cameras]
    if args.contrast_gain != 1.0:
        mean = x_train[:, :, cams].mean(0, keepdim=True)
        for x in (x_train, x_test):
            x[:, :, cams] = mean + args.contrast_gain * (x[:, :, cams] - mean)

    probe = Probe(layout, args.width, args.blocks, args.heads, args.seed, args.patch)
    opt = torch.optim.AdamW(probe.net.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.1)
    rng = np.random.default_rng(args.seed)
    sel = (slice(None), slice(0, args.r2_actions), list(args.r2_joints))

    def evaluate(it: int, elapsed: float) -> dict:
        probe.net.eval()
        with torch.no_grad():
            row = {"iter": it, "seconds": round(elapsed, 1)}
            for split, x in (("train", x_train), ("held_out", x_test)):
                pred, target = probe.actions(x)
                row[f"r2_{split}"] = round(r2_across_scenes(pred[sel], target[sel]), 4)
                row[f"l1_{split}"] = round(float((pred - target).abs().mean()), 4)
        probe.net.train()
        print(f"iter {it:5d}  {elapsed:6.0f} s  R² train {row['r2_train']:8.3f}  held-out {row['r2_held_out']:8.3f}  "
              f"L1 train {row['l1_train']:.4f}  held-out {row['l1_held_out']:.4f}", flush=True)
        return row

    history, start = [], time.perf_counter()
    for it in range(args.iters + 1):
        if it % args.eval_every == 0 or it == args.iters:
            history.append(evaluate(it, time.perf_counter() - start))
        if it == args.iters:
            break
        pred, target = probe.actions(x_train[rng.integers(len(x_train), size=args.batch)])
        loss = ((pred - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.net.parameters(), 1.0)
        opt.step()

    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "train_episodes": len(train_eps), "held_out": sorted(held_out), "history": history}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
