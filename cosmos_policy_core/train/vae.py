"""`train-vae`: the two-stage fallback that trains a small Wan2.1-layout VAE on demo images, and VAE loading for training.

Real users load the released Wan2.1 `tokenizer.pth` instead; this exists because no pretrained VAE weights are available offline.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cosmos_policy_core.checkpoint import CONFIG_FILE, VAE_FILE, load_checkpoint_dir
from cosmos_policy_core.errors import CheckpointError, ConfigError
from cosmos_policy_core.nn.wan_vae import CausalCache, VAEConfig, WanVAE
from cosmos_policy_core.train.samples import EpisodeFrames, load_episode_dir

log = logging.getLogger(__name__)

VAE_CONFIG_FILE = "vae_config.json"


# --- loading / saving ------------------------------------------------------------------------------
def save_vae_dir(path: str | Path, vae: WanVAE, metadata: dict | None = None) -> Path:
    """A VAE directory: vae_config.json (config + metadata) and vae.safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in vae.state_dict().items()}
    save_file(state, str(path / VAE_FILE), metadata={"format": "pt"})
    (path / VAE_CONFIG_FILE).write_text(json.dumps({"vae": vae.config.to_dict(), "metadata": metadata or {}},
                                                   indent=2))
    return path


def load_vae(path: str | Path) -> WanVAE:
    """A VAE from a `train-vae` directory, from one of our checkpoint directories, or from a Wan2.1 tokenizer.pth."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        return WanVAE.from_checkpoint(path)
    if (path / VAE_CONFIG_FILE).is_file():
        config = VAEConfig.from_dict(json.loads((path / VAE_CONFIG_FILE).read_text())["vae"])
        vae = WanVAE(config)
        vae.load_reference_state_dict(load_file(str(path / VAE_FILE)))
        return vae.eval()
    if (path / CONFIG_FILE).is_file():
        ckpt = load_checkpoint_dir(path)
        return ckpt.build_vae().eval()
    raise CheckpointError(
        f"{path} is not a VAE: pass a `cosmos-aloha train-vae` output directory, a checkpoint directory "
        "with vae.safetensors, or the Wan2.1 tokenizer.pth of nvidia/Cosmos-Predict2-2B-Video2World"
    )


# --- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAETrainConfig:
    """Reconstruction training of the tiny VAE on short clips (1 + 4k frames, so the causal temporal path learns)."""

    vae: VAEConfig = VAEConfig.tiny()
    steps: int = 1500
    batch_size: int = 4
    clip_frames: int = 5              # 1 + 4: one causal first frame, then one temporally compressed group
    image_size: int = 224
    lr: float = 1e-3
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    kl_weight: float = 1e-6           # a whisper of KL keeps the latent scale bounded
    latent_std_weight: float = 0.01   # pulls the normalized latent towards unit variance (what the DiT expects)
    blank_prob: float = 0.25          # fraction of clips (or, in "layout" clips, of groups) that are black
    # "camera": consecutive frames of one camera. "layout": like the policy's pixel clip, a black first frame then
    # groups of 4 copies of one image, each group a random camera (or black) of the same step, so the causal
    # encoder learns the camera switches between latent frames that every policy clip has.
    clip_mode: str = "camera"
    # Pixels weigh 1 + foreground_weight * |x - the mean image of that camera at that point of an episode| (mean
    # over the episodes' frames in the same `foreground_bucket`-step bucket; mean over RGB, [-1, 1] units) in the
    # reconstruction loss: what differs from the typical frame at that time (the object, wherever it lies)
    # outweighs the static table (a mean over all steps would weigh the moving arms as much). On the 64² sim
    # demos it did not make the small VAE keep the 3-pixel cube: 2 % of the top frame's loss at W = 200 is not
    # enough (docs/training.md, "The small VAE does not give the cube back"). 0: every pixel weighs the same.
    foreground_weight: float = 0.0
    foreground_bucket: int = 20
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.clip_frames < 1 or (self.clip_frames - 1) % 4:
            raise ConfigError(f"clip_frames must be 1 + 4k, got {self.clip_frames}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ConfigError("steps and batch_size must be positive")
        if self.clip_mode not in ("camera", "layout"):
            raise ConfigError(f"clip_mode must be 'camera' or 'layout', got {self.clip_mode!r}")
        if self.clip_mode == "layout" and self.clip_frames < 5:
            raise ConfigError("layout clips need at least one group of 4 frames (clip_frames >= 5)")
        if self.foreground_weight < 0:
            raise ConfigError(f"foreground_weight must be >= 0, got {self.foreground_weight}")
        if self.foreground_bucket < 1:
            raise ConfigError(f"foreground_bucket must be >= 1 step, got {self.foreground_bucket}")


BLACK = -1  # the camera index of a black frame in a clip's (camera, step) record


def _camera_clip(ep: EpisodeFrames, cam: int, cameras: Sequence[str], cfg: VAETrainConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive frames (every other step) of one camera, some clips starting black as the policy's does;
    with each frame's (camera index, step)."""
    from cosmos_policy_core.images import client_resize

    stride = 2
    start = int(rng.integers(max(1, len(ep) - stride * cfg.clip_frames)))
    steps = [min(len(ep) - 1, start + stride * i) for i in range(cfg.clip_frames)]
    clip = np.stack([client_resize(ep.frame(cameras[cam], step), cfg.image_size) for step in steps])
    record = np.array([(cam, step) for step in steps])
    if cfg.clip_frames > 1 and rng.random() < cfg.blank_prob:
        n_black = 1 + 4 * int(rng.integers((cfg.clip_frames - 1) // 4))
        clip[:n_black], record[:n_black, 0] = 0, BLACK
    return clip, record


def _layout_clip(ep: EpisodeFrames, cameras: Sequence[str], cfg: VAETrainConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A black frame, then groups of 4 identical frames: a random camera (or black) of one step each."""
    from cosmos_policy_core.images import client_resize

    step = int(rng.integers(len(ep)))
    clip = np.zeros((cfg.clip_frames, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    record = np.array([(BLACK, step)] * cfg.clip_frames)
    for g in range((cfg.clip_frames - 1) // 4):
        if rng.random() >= cfg.blank_prob:
            cam = int(rng.integers(len(cameras)))
            clip[1 + 4 * g: 5 + 4 * g] = client_resize(ep.frame(cameras[cam], step), cfg.image_size)
            record[1 + 4 * g: 5 + 4 * g, 0] = cam
    return clip, record


def _clip_batch(episodes: Sequence[EpisodeFrames], cameras: Sequence[str], cfg: VAETrainConfig,
                rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """(B, 3, T, S, S) in [-1, 1]: `cfg.clip_mode` clips of random episodes; and (B, T, 2) each frame's
    (camera index into `cameras`, or BLACK; episode step)."""
    clips, records = [], []
    for _ in range(cfg.batch_size):
        ep = episodes[int(rng.integers(len(episodes)))]
        if cfg.clip_mode == "layout":
            clip, record = _layout_clip(ep, cameras, cfg, rng)
        else:
            clip, record = _camera_clip(ep, int(rng.integers(len(cameras))), cameras, cfg, rng)
        clips.append(clip)
        records.append(record)
    x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0, np.stack(records)


def camera_mean_images(episodes: Sequence[EpisodeFrames], cameras: Sequence[str], image_size: int,
                       bucket: int, frames_per_bucket: int = 64, seed: int = 0) -> torch.Tensor:
    """(n_cameras, n_buckets, 3, S, S): each camera's mean image in [-1, 1] over random frames of random
    episodes whose step lies in each `bucket`-step bucket (bucket k: steps k*bucket .. (k+1)*bucket - 1)."""
    from cosmos_policy_core.images import client_resize

    rng = np.random.default_rng(seed)
    n_buckets = -(-max(len(ep) for ep in episodes) // bucket)
    means = np.zeros((len(cameras), n_buckets, image_size, image_size, 3))
    for k in range(n_buckets):
        holders = [ep for ep in episodes if len(ep) > k * bucket]
        for c, cam in enumerate(cameras):
            for _ in range(frames_per_bucket):
                ep = holders[int(rng.integers(len(holders)))]
                step = int(rng.integers(k * bucket, min(len(ep), (k + 1) * bucket)))
                means[c, k] += client_resize(ep.frame(cam, step), image_size)
    return torch.from_numpy(means / frames_per_bucket).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0


def foreground_weights(video_B_3_T_H_W: torch.Tensor, record_B_T_2: np.ndarray, means: torch.Tensor,
                       weight: float, bucket: int) -> torch.Tensor:
    """(B, 1, T, H, W) per-pixel loss weights 1 + weight * |x - mean image of the frame's camera and step bucket|
    (mean over RGB); black frames weigh 1. Steps past the last bucket use the last one."""
    cam = torch.as_tensor(record_B_T_2[..., 0], device=video_B_3_T_H_W.device)
    k = torch.as_tensor(record_B_T_2[..., 1] // bucket, device=video_B_3_T_H_W.device).clamp(max=means.shape[1] - 1)
    ref = means[cam.clamp(min=0), k]                                            # B, T, 3, H, W
    dev = (video_B_3_T_H_W.permute(0, 2, 1, 3, 4) - ref).abs().mean(2)        # B, T, H, W
    dev = torch.where((cam == BLACK)[:, :, None, None], torch.zeros_like(dev), dev)
    return (1.0 + weight * dev)[:, None]


def vae_losses(vae: WanVAE, video_B_3_T_H_W: torch.Tensor, cfg: VAETrainConfig,
               weights_B_1_T_H_W: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Reconstruction (L1 + L2, per-pixel `weights` if given, normalized by their sum), KL of the posterior and
    a unit-variance pull on the normalized latent."""
    h = vae.encoder(video_B_3_T_H_W, CausalCache())
    mu, log_var = vae.conv1(h).chunk(2, dim=1)
    log_var = log_var.clamp(-30.0, 20.0)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if cfg.kl_weight > 0 else mu
    recon = vae.decoder(vae.conv2(z), CausalCache())
    err = recon - video_B_3_T_H_W
    if weights_B_1_T_H_W is None:
        l1, l2 = err.abs().mean(), (err**2).mean()
    else:
        w = weights_B_1_T_H_W.expand_as(err)
        l1, l2 = (w * err.abs()).sum() / w.sum(), (w * err**2).sum() / w.sum()
    kl = 0.5 * (mu**2 + log_var.exp() - 1.0 - log_var).mean()
    z_norm = (mu - vae.latent_mean.view(1, -1, 1, 1, 1)) / vae.latent_std.view(1, -1, 1, 1, 1)
    std_pull = (z_norm.std() - 1.0) ** 2
    total = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.kl_weight * kl + cfg.latent_std_weight * std_pull
    return {"loss": total, "l1": l1, "l2": l2, "kl": kl, "latent_std": z_norm.std().detach()}


def vae_lr_factor(step: int, steps: int, elapsed_s: float = 0.0, time_limit: float | None = None) -> float:
    """Cosine from 1 to 0.1 over the run; its progress is the larger of step / steps and elapsed / time limit."""
    progress = step / steps
    if time_limit:
        progress = max(progress, elapsed_s / time_limit)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_vae(data_dir: str | Path, out_dir: str | Path, cfg: VAETrainConfig = VAETrainConfig(),
              progress: bool = True, device: str | torch.device | None = None,
              time_limit: float | None = None, init: str | Path | None = None) -> dict:
    """Train the VAE on the demos' camera frames and save it to `out_dir`; returns the metrics history.

    `init`: a VAE (anything `load_vae` reads) to fine-tune instead of starting from scratch; its architecture
    replaces `cfg.vae`.
    `device`: "cuda" when available by default. `time_limit` (seconds) stops early; the cosine LR then
    anneals over the time limit when that ends the run before `cfg.steps`.
    """
    from tqdm import tqdm

    from cosmos_policy_core.layout import LatentLayout

    episodes = load_episode_dir(data_dir)
    cameras = LatentLayout.aloha().camera_sources
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = (load_vae(init) if init is not None else WanVAE(cfg.vae)).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    means = (camera_mean_images(episodes, cameras, cfg.image_size, cfg.foreground_bucket, seed=cfg.seed).to(device)
             if cfg.foreground_weight > 0 else None)
    history = []
    start = time.perf_counter()
    steps_done = 0
    bar = tqdm(range(cfg.steps), desc="train-vae", disable=not progress)
    for step in bar:
        if step and time_limit is not None and time.perf_counter() - start > time_limit:
            log.info("train-vae: time limit of %.0f s reached at step %d of %d", time_limit, step, cfg.steps)
            break
        # Cosine decay to 10 % over whichever budget runs out first (steps or time): the last steps polish
        # the reconstruction.
        for g in opt.param_groups:
            g["lr"] = cfg.lr * vae_lr_factor(step, cfg.steps, time.perf_counter() - start, time_limit)
        video, record = _clip_batch(episodes, cameras, cfg, rng)
        video = video.to(device)
        weights = (foreground_weights(video, record, means, cfg.foreground_weight, cfg.foreground_bucket)
                   if means is not None else None)
        losses = vae_losses(vae, video, cfg, weights)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        steps_done = step + 1
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": step, **{k: float(v.detach()) for k, v in losses.items()},
                   "seconds": round(time.perf_counter() - start, 1)}
            history.append(row)
            bar.set_postfix(l1=f"{row['l1']:.4f}", std=f"{row['latent_std']:.2f}")
    vae = vae.eval().cpu()
    # The PSNR of a held set of clips tells the user whether the VAE is good enough to train on.
    with torch.no_grad():
        video, _ = _clip_batch(episodes, cameras, cfg, np.random.default_rng(cfg.seed + 1))
        recon = vae.decode(vae.encode(video))
        mse = float(((recon - video) ** 2).mean()) / 4.0  # [-1, 1] -> [0, 1] scale
        psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
    metadata = {"trained_by": "cosmos-aloha train-vae", "data": str(data_dir), "steps": steps_done,
                "init": None if init is None else str(init),
                "config": {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in cfg.__dict__.items()
                           if not (k == "vae" and init is not None)},
                "psnr_db": round(psnr, 2), "episodes": len(episodes)}
    save_vae_dir(out_dir, vae, metadata)
    (Path(out_dir) / "vae_metrics.json").write_text(json.dumps(history, indent=1))
    log.info("train-vae: %d steps in %.0f s, reconstruction PSNR %.2f dB -> %s", steps_done,
             time.perf_counter() - start, psnr, out_dir)
    return {"history": history, "psnr_db": psnr, "steps": steps_done}


__all__ = ["vae_lr_factor", "VAETrainConfig", "save_vae_dir", "load_vae", "vae_losses", "train_vae", "VAE_CONFIG_FILE",
           "camera_mean_images", "foreground_weights"]
