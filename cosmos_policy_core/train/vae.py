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

from cosmos_policy_core import atomic
from cosmos_policy_core.checkpoint import CONFIG_FILE, VAE_FILE, load_checkpoint_dir
from cosmos_policy_core.data.episode import load_episode_dir
from cosmos_policy_core.errors import CheckpointError, ConfigError
from cosmos_policy_core.nn.wan_vae import CausalCache, VAEConfig, WanVAE
from cosmos_policy_core.train.samples import EpisodeFrames

log = logging.getLogger(__name__)

VAE_CONFIG_FILE = "vae_config.json"


# --- loading / saving ------------------------------------------------------------------------------
def save_vae_dir(path: str | Path, vae: WanVAE, metadata: dict | None = None) -> Path:
    """A VAE directory: vae_config.json (config + metadata) and vae.safetensors."""
    from safetensors.torch import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in vae.state_dict().items()}
    # Each file replaced whole, the config last: `load_vae` looks for it, so a killed save is never half-read.
    atomic.write_bytes(path / VAE_FILE, save(state, metadata={"format": "pt"}))
    atomic.write_text(path / VAE_CONFIG_FILE, json.dumps({"vae": vae.config.to_dict(), "metadata": metadata or {}},
                                                         indent=2))
    return path


def load_vae(path: str | Path) -> WanVAE:
    """A VAE from a `train-vae` directory, from one of our checkpoint directories, or from a Wan2.1 tokenizer.pth."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        return WanVAE.from_checkpoint(path)
    if (path / VAE_CONFIG_FILE).is_file():
        try:
            config = VAEConfig.from_dict(json.loads((path / VAE_CONFIG_FILE).read_text())["vae"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError,
                ConfigError) as e:
            raise CheckpointError(f"{path / VAE_CONFIG_FILE} is not a valid VAE config ({type(e).__name__}: {e}); "
                                  "train the VAE again or pass another --vae") from e
        vae = WanVAE(config)
        try:
            state = load_file(str(path / VAE_FILE))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path / VAE_FILE} is missing, truncated or corrupt ({e})") from e
        vae.load_reference_state_dict(state)
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
    # outweighs the static table (a mean over all steps would weigh the moving arms as much). A 3-pixel object
    # stays a few % of the loss even so; reset scenes (`object_scenes`) are what keeps it. 0: every pixel weighs
    # the same.
    foreground_weight: float = 0.0
    foreground_bucket: int = 20
    # `object_scenes` > 0: render that many reset scenes of the sim task `object_task` (only the object's pose
    # differs between them) and make `object_fraction` of every batch layout clips of them, their pixels weighed
    # 1 + object_weight * |x - the scenes' mean image| (the object alone; see ObjectScenes). 16 more scenes are
    # held out and the VAE's object recall on them is reported per camera.
    object_scenes: int = 0
    object_task: str = "transfer_cube"
    object_fraction: float = 0.75
    object_weight: float = 200.0
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
        if self.object_scenes < 0 or self.object_scenes == 1:
            raise ConfigError(f"object_scenes must be 0 (off) or at least 2, got {self.object_scenes}")
        if not 0.0 < self.object_fraction <= 1.0:
            raise ConfigError(f"object_fraction must be in (0, 1], got {self.object_fraction}")
        if self.object_weight < 0:
            raise ConfigError(f"object_weight must be >= 0, got {self.object_weight}")
        if self.object_scenes and self.clip_frames < 5:
            raise ConfigError("object scenes come as layout clips: clip_frames must be >= 5")


BLACK = -1  # the camera index of a black frame in a clip's (camera, step) record
OBJECT_SEED = 100_000  # object scenes are sim resets from this seed on (+ cfg.seed), apart from eval seeds
OBJECT_HELD_OUT = 16   # reset scenes rendered after the training ones, for the object recall report


def _camera_clip(ep: EpisodeFrames, cam: int, cameras: Sequence[str], cfg: VAETrainConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive frames (every other step) of one camera, some clips starting black as the policy's does;
    with each frame's (camera index, step)."""
    from cosmos_policy_core.runtime.images import client_resize

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
    from cosmos_policy_core.runtime.images import client_resize

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
                rng: np.random.Generator, n: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """(n, 3, T, S, S) in [-1, 1]: `cfg.clip_mode` clips of random episodes (n: `cfg.batch_size` by default);
    and (n, T, 2) each frame's (camera index into `cameras`, or BLACK; episode step)."""
    n = cfg.batch_size if n is None else n
    clips, records = [], []
    for _ in range(n):
        ep = episodes[int(rng.integers(len(episodes)))]
        if cfg.clip_mode == "layout":
            clip, record = _layout_clip(ep, cameras, cfg, rng)
        else:
            clip, record = _camera_clip(ep, int(rng.integers(len(cameras))), cameras, cfg, rng)
        clips.append(clip)
        records.append(record)
    if not clips:
        return (torch.zeros(0, 3, cfg.clip_frames, cfg.image_size, cfg.image_size),
                np.zeros((0, cfg.clip_frames, 2), dtype=np.int64))
    x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0, np.stack(records)


def camera_mean_images(episodes: Sequence[EpisodeFrames], cameras: Sequence[str], image_size: int,
                       bucket: int, frames_per_bucket: int = 64, seed: int = 0) -> torch.Tensor:
    """(n_cameras, n_buckets, 3, S, S): each camera's mean image in [-1, 1] over random frames of random
    episodes whose step lies in each `bucket`-step bucket (bucket k: steps k*bucket .. (k+1)*bucket - 1)."""
    from cosmos_policy_core.runtime.images import client_resize

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


def object_recall(recon: torch.Tensor, video: torch.Tensor, mean: torch.Tensor, threshold: float = 0.1) -> float | None:
    """How much of what differs from a reference image the VAE gives back: 1 - |recon - x| / |x - mean| over the
    pixels whose |x - mean| (mean over RGB, [-1, 1] units) exceeds `threshold`, pooled over everything given.

    `recon` (N, 3, T, H, W) and `video` (N, 3, T or 1, H, W) broadcast; `mean` broadcasts against `video`.
    1: the object comes back; 0: the mean image does; < 0: worse. None where no pixel differs."""
    dev = (video - mean).abs().mean(1, keepdim=True)
    err = (recon - video).abs().mean(1, keepdim=True)
    fg = (dev > threshold).expand_as(err)
    if not fg.any():
        return None
    return 1.0 - float(err[fg].sum()) / float(dev.expand_as(err)[fg].sum())


class ObjectScenes:
    """Reset scenes of a sim task, where only the object's pose differs: clips of them weighted on the object.

    In these scenes a pixel that differs from the scenes' mean image belongs to the object, so weighting the
    loss by 1 + weight * |x - mean| puts it on the object alone. On the 64² transfer-cube demos the weighting
    of `foreground_weight` (about the demos' per-step mean images, where the arms differ too) left the 3-pixel
    cube 1-2 % of the loss and the VAE dropped it; these clips make it keep it (docs/training.md §4).

    `images`: (scenes, cameras, 3, S, S) in [-1, 1], cameras in the layout's order (the last one the
    third-person camera, where the object is smallest).
    """

    def __init__(self, images: torch.Tensor):
        if images.ndim != 5 or images.shape[2] != 3:
            raise ConfigError(f"object scenes must be (scenes, cameras, 3, S, S), got {tuple(images.shape)}")
        if images.shape[0] < 2:
            raise ConfigError("object scenes need at least 2 scenes (the object is what differs between them)")
        self.images = images
        self.mean = images.mean(0)                                          # cameras, 3, S, S

    @classmethod
    def render(cls, task: str, scenes: int, seed: int, cameras: Sequence[str], image_size: int,
               render_size: int = 224) -> "ObjectScenes":
        """Render `scenes` reset scenes of a sim task and resize them as the policy does."""
        from cosmos_policy_core.runtime.images import client_resize
        from cosmos_policy_core.sim.env import render_reset_scenes

        frames = render_reset_scenes(task, scenes, seed, render_size)
        missing = [cam for cam in cameras if cam not in frames[0]]
        if missing:
            raise ConfigError(f"the {task!r} sim renders {sorted(frames[0])}, not {missing}")
        arr = np.stack([[np.asarray(client_resize(f[cam], image_size)) for cam in cameras] for f in frames])
        return cls(torch.from_numpy(arr).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0)

    def __len__(self) -> int:
        return self.images.shape[0]

    def clip(self, scene: int, frames: int, weight: float, blank_prob: float,
             rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, T, S, S) video and (1, T, S, S) weights of one scene in a layout clip: a black first frame, then
        groups of 4 copies of a random camera's image (or black); the last group is never black and shows the
        third-person camera half the time. Black frames weigh 1."""
        n_cams, size = self.images.shape[1], self.images.shape[-1]
        video = torch.full((3, frames, size, size), -1.0)
        weights = torch.ones(1, frames, size, size)
        groups = (frames - 1) // 4
        for g in range(groups):
            last = g == groups - 1
            if last and rng.random() < 0.5:
                cam = n_cams - 1
            elif not last and rng.random() < blank_prob:
                continue
            else:
                cam = int(rng.integers(n_cams))
            image = self.images[scene, cam]
            video[:, 1 + 4 * g: 5 + 4 * g] = image[:, None]
            weights[:, 1 + 4 * g: 5 + 4 * g] = 1.0 + weight * (image - self.mean[cam]).abs().mean(0)
        return video, weights

    def batch(self, n: int, frames: int, weight: float, blank_prob: float,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` clips of random scenes: (n, 3, T, S, S) video, (n, 1, T, S, S) weights."""
        pairs = [self.clip(int(rng.integers(len(self))), frames, weight, blank_prob, rng) for _ in range(n)]
        return torch.stack([v for v, _ in pairs]), torch.stack([w for _, w in pairs])

    @torch.no_grad()
    def recall(self, vae: WanVAE, camera: int, batch: int = 16) -> float | None:
        """`object_recall` of one camera over all scenes, each as a black frame then 4 copies of its image."""
        parts = []
        for start in range(0, len(self), batch):
            image = self.images[start:start + batch, camera]                  # n, 3, S, S
            black = torch.full_like(image, -1.0)[:, :, None]
            video = torch.cat([black, image[:, :, None].expand(-1, -1, 4, -1, -1)], 2)
            recon = vae.decode(vae.encode(video.to(next(vae.parameters()).device))).cpu()
            parts.append((recon[:, :, 1:], video[:, :, 1:]))
        recon, video = torch.cat([r for r, _ in parts]), torch.cat([v for _, v in parts])
        return object_recall(recon, video, self.mean[camera][None, :, None])


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
    objects = held_out = None
    n_objects = 0
    if cfg.object_scenes:
        log.info("train-vae: rendering %d + %d reset scenes of %s", cfg.object_scenes, OBJECT_HELD_OUT, cfg.object_task)
        rendered = ObjectScenes.render(cfg.object_task, cfg.object_scenes + OBJECT_HELD_OUT, OBJECT_SEED + cfg.seed,
                                       cameras, cfg.image_size)
        objects = ObjectScenes(rendered.images[:cfg.object_scenes])
        held_out = ObjectScenes(rendered.images[cfg.object_scenes:])
        n_objects = max(1, round(cfg.batch_size * cfg.object_fraction))
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
        video, record = _clip_batch(episodes, cameras, cfg, rng, n=cfg.batch_size - n_objects)
        video = video.to(device)
        weights = (foreground_weights(video, record, means, cfg.foreground_weight, cfg.foreground_bucket)
                   if means is not None else None)
        if objects is not None:
            object_video, object_weights = objects.batch(n_objects, cfg.clip_frames, cfg.object_weight,
                                                         cfg.blank_prob, rng)
            weights = torch.ones_like(video[:, :1]) if weights is None else weights
            video = torch.cat([video, object_video.to(device)])
            weights = torch.cat([weights, object_weights.to(device)])
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
    # Whether the VAE keeps the object: its recall on reset scenes it never saw (1: all of it, 0: the mean image).
    recall = ({cam: held_out.recall(vae, c) for c, cam in enumerate(cameras)} if held_out is not None else None)
    if recall is not None:
        recall = {cam: None if r is None else round(r, 4) for cam, r in recall.items()}
        log.info("train-vae: object recall on %d held-out reset scenes: %s", len(held_out), recall)
    metadata = {"trained_by": "cosmos-aloha train-vae", "data": str(data_dir), "steps": steps_done,
                "init": None if init is None else str(init),
                "config": {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in cfg.__dict__.items()
                           if not (k == "vae" and init is not None)},
                "psnr_db": round(psnr, 2), "episodes": len(episodes), "object_recall": recall}
    save_vae_dir(out_dir, vae, metadata)
    (Path(out_dir) / "vae_metrics.json").write_text(json.dumps(history, indent=1))
    log.info("train-vae: %d steps in %.0f s, reconstruction PSNR %.2f dB -> %s", steps_done,
             time.perf_counter() - start, psnr, out_dir)
    return {"history": history, "psnr_db": psnr, "steps": steps_done, "object_recall": recall}


__all__ = ["vae_lr_factor", "VAETrainConfig", "save_vae_dir", "load_vae", "vae_losses", "train_vae", "VAE_CONFIG_FILE",
           "camera_mean_images", "foreground_weights", "object_recall", "ObjectScenes"]
