"""Evaluation of a training run and its plots: held-out action L1 of policy samples against the blind baseline
(the demos' mean chunk), and loss.png.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cosmos_policy_core.diffusion import initial_noise, make_x0_fn, sample
from cosmos_policy_core.layout import (
    build_pixel_clip, clip_to_vae_input, condition_mask, extract_action_chunk, inject_proprio,
)
from cosmos_policy_core.train.batch import image_tensors
from cosmos_policy_core.train.data import TrainingData
from cosmos_policy_core.train.samples import SampleBuilder, action_chunk_with_padding


class ActionEvaluator:
    """Action L1 of the policy on held-out demos (the training demos when none is held out), at evenly spaced steps
    with a fixed noise seed, so evaluations at different steps of a run compare."""

    def __init__(self, data: TrainingData, config, device: torch.device):
        self.data, self.config, self.device = data, config, device

    @torch.no_grad()
    def evaluate(self, net: torch.nn.Module, vae, step: int) -> dict | None:
        """Action L1 in normalized and robot units, and the blind baseline's, at training step `step`."""
        data, cfg, lay = self.data, self.config, self.data.layout
        episodes = data.val_demos or data.train_demos
        if not episodes:
            return None
        # Evenly spaced steps of the held-out demos: no first-step emphasis, no rollouts.
        builder = SampleBuilder(lay, data.stats, episodes, (),
                                replace(cfg.samples, treat_demos_as_success_rollouts=False, first_steps_prob=0.0))
        total = builder.structure.demo
        positions = np.linspace(0, total - 1, cfg.eval_samples).round().astype(int)
        specs = [builder.spec_for_slot(int(p), np.random.default_rng(0)) for p in positions]
        samples = [builder.build(s) for s in specs]
        # Inference-time clip: future camera slots hold copies of the current images (placeholders).
        clips = [build_pixel_clip(lay, image_tensors(s.current)) for s in samples]
        video = clip_to_vae_input(torch.cat(clips).to(self.device), dtype=vae.dtype)
        clean = vae.encode(video, chunk_frames=None).float()
        gt = inject_proprio(clean, torch.from_numpy(np.stack([s.proprio for s in samples])).to(clean),
                            lay.index("proprio"))
        mask = condition_mask(lay, "policy", len(samples), device=clean.device)
        text = torch.cat([data.text[s.task] for s in samples]).to(clean)
        net.eval()
        x0_fn = make_x0_fn(net, gt, mask, text)
        noise = initial_noise(list(range(len(samples))), lay.latent_shape, cfg.diffusion.sigma_max, device=clean.device)
        latent = sample(x0_fn, noise, cfg.eval_sampling_steps, cfg.diffusion)
        pred = extract_action_chunk(latent, lay.index("action"), lay.chunk_size, lay.action_dim).double().cpu().numpy()
        target = np.stack([s.actions for s in samples]).astype(np.float64)
        l1_norm = float(np.abs(pred - target).mean())
        l1_robot = float(np.abs(data.stats.unnormalize_actions(np.clip(pred, -1, 1))
                                - data.stats.unnormalize_actions(target)).mean())
        mean_chunks = np.stack([self.mean_chunk(s.step) for s in specs])
        return {"step": step, "action_l1_normalized": l1_norm, "action_l1_robot": l1_robot,
                "mean_chunk_l1_normalized": float(np.abs(mean_chunks - target).mean()),
                "samples": len(samples), "sampling_steps": cfg.eval_sampling_steps,
                "held_out": bool(data.val_demos)}

    def mean_chunk(self, step: int) -> np.ndarray:
        """The training demos' mean normalized action chunk at `step`: what a policy that ignores its
        observation and knows only the time would play. A policy whose held-out L1 is not clearly below
        this baseline's has not learned to look (e.g. where the object is)."""
        episodes = self.data.train_demos or self.data.val_demos
        chunks = [action_chunk_with_padding(ep.action, min(step, len(ep) - 1), self.data.layout.chunk_size)
                  for ep in episodes]
        return np.mean([self.data.stats.normalize_actions(c.astype(np.float64)) for c in chunks], axis=0)


def plot_history(history: Sequence[dict], eval_history: Sequence[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in history]
    axes[0].plot(steps, [r["loss"] for r in history], label="total")
    for key in sorted({k for r in history for k in r if k.startswith("loss_")}):
        pts = [(r["step"], r[key]) for r in history if key in r]
        axes[0].plot(*zip(*pts), label=key[5:], alpha=0.6)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("diffusion loss (×10 velocity MSE)")
    axes[0].legend()
    axes[1].plot(steps, [r["lr"] for r in history])
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("step")
    if eval_history:
        axes[2].plot([r["step"] for r in eval_history], [r["action_l1_normalized"] for r in eval_history], "o-",
                     label="policy")
        baseline = [(r["step"], r["mean_chunk_l1_normalized"]) for r in eval_history if "mean_chunk_l1_normalized" in r]
        if baseline:
            axes[2].plot(*zip(*baseline), "k--", label="demos' mean chunk (blind)")
        axes[2].legend()
    axes[2].set_title("held-out action L1 (normalized)")
    axes[2].set_xlabel("step")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


__all__ = ["ActionEvaluator", "plot_history"]
