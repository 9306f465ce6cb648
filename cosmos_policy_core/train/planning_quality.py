"""How good a planning model is on held-out rollouts: the value's AUROC for eventual success and the world model's
PSNR at t + chunk against copying the current frame (what `cosmos-aloha sim score-planning` prints).

Each scored sample is a step t of a recorded episode. The world model is given the actions the robot executed from
t (the rollout's commands), so its prediction can be compared with the frames that followed them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.layout import build_pixel_clip, inject_action_chunk, inject_proprio
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation
from cosmos_policy_core.train.samples import EpisodeFrames, action_chunk_with_padding


# --- pure measures ------------------------------------------------------------------------------------
def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the chance that a random positive outranks a random negative, ties counting
    one half (the Mann-Whitney U statistic / (positives x negatives)). None when a class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ConfigError(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def mse_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of two uint8 images of one shape, in pixel levels squared."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ConfigError(f"images differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of 8-bit images with this mean squared error: 10 log10(255² / mse); inf for identical images."""
    if mse < 0:
        raise ConfigError(f"a mean squared error cannot be negative, got {mse}")
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    return psnr_from_mse(mse_uint8(a, b))


# --- scoring a planning model ----------------------------------------------------------------------------
@dataclass
class ScoredStep:
    episode: str
    step: int
    success: bool                 # the episode's eventual success
    value_actual: float           # V(s') given the frames and joints actually reached at t + chunk
    value_predicted: float        # V(s') of the world model's prediction (what the planner ranks with)
    mse_world_model: float        # predicted vs actual frames at t + chunk, mean over cameras
    mse_copy: float               # the current frames vs the actual ones at t + chunk


@dataclass
class PlanningScores:
    """The summary `score-planning` prints and writes (per_step holds every scored step)."""

    episodes: int
    successes: int
    samples: int
    value_auroc: float | None            # V(s') on the actual s'
    value_auroc_predicted: float | None  # V(s') on the world model's s'
    world_model_psnr_db: float           # PSNR of the mean squared error over every scored frame
    copy_psnr_db: float                  # the same for the copy-the-current-frame baseline
    world_model_better: float            # share of samples where the world model's frames beat the copy
    config: dict = field(default_factory=dict)
    per_step: list[ScoredStep] = field(default_factory=list)

    def to_json_dict(self) -> dict:
        out = asdict(self)
        for key in ("world_model_psnr_db", "copy_psnr_db"):
            if math.isinf(out[key]):
                out[key] = None if out[key] < 0 else "inf"
        return out


def summarize(steps: Sequence[ScoredStep], config: dict | None = None) -> PlanningScores:
    """The measures over scored steps: AUROCs against the episodes' success, pooled-MSE PSNRs, the paired share."""
    if not steps:
        raise DataError("no step was scored: the rollouts are shorter than one chunk, or none was given")
    labels = [s.success for s in steps]
    names = {s.episode: s.success for s in steps}
    wm = float(np.mean([s.mse_world_model for s in steps]))
    copy = float(np.mean([s.mse_copy for s in steps]))
    return PlanningScores(
        episodes=len(names), successes=sum(names.values()), samples=len(steps),
        value_auroc=auroc([s.value_actual for s in steps], labels),
        value_auroc_predicted=auroc([s.value_predicted for s in steps], labels),
        world_model_psnr_db=psnr_from_mse(wm), copy_psnr_db=psnr_from_mse(copy),
        world_model_better=float(np.mean([s.mse_world_model < s.mse_copy for s in steps])),
        config=dict(config or {}), per_step=list(steps),
    )


@torch.no_grad()
def score_step(policy: CosmosPolicy, episode: EpisodeFrames, step: int, *, seed: int = 0,
               world_model_steps: int = 5, value_steps: int = 5, value_mode: str = "V(s')") -> ScoredStep:
    """Score one step t of a recorded episode (t + chunk must lie inside it)."""
    lay = policy.layout
    future = step + lay.chunk_size
    if step < 0 or future >= len(episode):
        raise DataError(f"{episode.name}: step {step} + chunk {lay.chunk_size} lies past its {len(episode)} steps")
    cameras = lay.camera_sources
    obs = Observation(images={c: episode.frame(c, step) for c in cameras}, proprio=episode.qpos[step],
                      task=episode.task)
    cond = policy.encode_observation(obs)
    actions = action_chunk_with_padding(np.asarray(episode.action, np.float64), step, lay.chunk_size)
    actions_1_K_D = torch.from_numpy(np.asarray(policy.stats.normalize_actions(actions), np.float32))[None]
    executed = inject_action_chunk(cond.gt_1_C_T_H_W, actions_1_K_D.to(cond.gt_1_C_T_H_W.device), lay.index("action"))

    predicted_latent = policy.predict_future(cond, executed, [seed], world_model_steps)
    predicted = policy.decode_future_images(cond, predicted_latent)[0]
    actual = policy.preprocess_images({c: episode.frame(c, future) for c in cameras})
    mse_wm = float(np.mean([mse_uint8(predicted[c], actual[c]) for c in cameras]))
    mse_copy = float(np.mean([mse_uint8(cond.images[c], actual[c]) for c in cameras]))
    value_predicted = policy.value(cond, predicted_latent, [seed], value_steps, mode=value_mode)

    # The state actually reached: the whole clip encoded with the real future frames, joints injected.
    clip = build_pixel_clip(lay, {c: torch.from_numpy(np.ascontiguousarray(cond.images[c])) for c in cameras},
                            {c: torch.from_numpy(np.ascontiguousarray(actual[c])) for c in cameras})
    reached = policy.encode_clip(clip).latents.to(executed.device)
    reached = inject_proprio(reached, cond.proprio_1_D, lay.index("proprio"))
    reached = inject_action_chunk(reached, actions_1_K_D.to(reached.device), lay.index("action"))
    future_proprio = policy.normalize_proprio(episode.qpos[future]).to(reached.device)
    reached = inject_proprio(reached, future_proprio, lay.index("future_proprio"))
    value_actual = policy.value(cond, reached, [seed], value_steps, mode=value_mode)
    return ScoredStep(episode=episode.name, step=int(step), success=bool(episode.success),
                      value_actual=float(value_actual[0]), value_predicted=float(value_predicted[0]),
                      mse_world_model=mse_wm, mse_copy=mse_copy)


def scored_steps(length: int, chunk: int, stride: int) -> list[int]:
    """The steps of an episode of `length` that are scored: 0, stride, 2 stride, ... while t + chunk < length."""
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    return list(range(0, max(0, length - chunk), stride))


def score_planning(policy: CosmosPolicy, episodes: Sequence[EpisodeFrames], *, stride: int = 25, seed: int = 0,
                   world_model_steps: int = 5, value_steps: int = 5, value_mode: str = "V(s')",
                   progress: bool = False) -> PlanningScores:
    """Score every `stride`-th step of each episode (those a whole chunk ahead of the episode's end)."""
    from tqdm import tqdm

    jobs = [(ep, t) for ep in episodes for t in scored_steps(len(ep), policy.layout.chunk_size, stride)]
    if not jobs:
        raise DataError(f"none of the {len(episodes)} episodes is longer than one chunk "
                        f"({policy.layout.chunk_size} steps): nothing to score")
    steps = [score_step(policy, ep, t, seed=seed + i, world_model_steps=world_model_steps, value_steps=value_steps,
                        value_mode=value_mode)
             for i, (ep, t) in enumerate(tqdm(jobs, desc="score planning", unit="step", disable=not progress))]
    config = {"stride": stride, "seed": seed, "world_model_steps": world_model_steps, "value_steps": value_steps,
              "value_mode": value_mode, "chunk": policy.layout.chunk_size}
    return summarize(steps, config)


__all__ = ["auroc", "mse_uint8", "psnr_from_mse", "psnr", "ScoredStep", "PlanningScores", "summarize", "score_step",
           "scored_steps", "score_planning"]
