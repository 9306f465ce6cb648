"""Latent frame layouts per robot and the codec between robot data and latent frames.

Owns the frame order, the pixel clip fed to the VAE, injection/extraction of proprio, action chunk and value, min/max normalization and the conditioning mask of each model role.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from cosmos_policy_core.errors import ConfigError, ShapeError

# Slots whose latent frame is a black image overwritten in latent space (never a camera image).
INJECTED_SLOTS = ("proprio", "action", "future_proprio", "value")
# Slots the reference resets to the clean black-image latent before a VAE decode of predicted
# frames (value is last, so the causal decoder never sees it before an image frame).
DECODE_RESTORE_SLOTS = ("blank", "proprio", "action", "future_proprio")

ROLES = ("policy", "world_model", "value_v_sas", "value_v_s", "q_sa")
# Training crops 90 % of the image area (reference §1); test time centre-crops the same area and resizes back.
TRAIN_CROP_AREA = 0.9


@dataclass(frozen=True)
class LatentLayout:
    """Which latent frame holds what, and the sizes of every modality, for one robot.

    `cameras` are the model's camera slot names in latent order (current images, and the same
    order again for the future images); `camera_sources` are the dataset / ROS camera names that
    feed them, position by position.
    """

    name: str
    cameras: tuple[str, ...]
    camera_sources: tuple[str, ...]
    chunk_size: int
    action_dim: int
    proprio_dim: int
    execute_steps: int
    duplicates_per_image: int = 4
    image_size: int = 224
    latent_channels: int = 16
    spatial_compression: int = 8

    # --- presets -----------------------------------------------------------------------------
    @classmethod
    def aloha(cls) -> "LatentLayout":
        """ALOHA: 11 latent / 41 pixel frames, 50x14 actions, 14-D proprio, 3 cameras."""
        return cls(
            name="aloha",
            cameras=("left_wrist", "right_wrist", "top"),
            camera_sources=("cam_left_wrist", "cam_right_wrist", "cam_high"),
            chunk_size=50, action_dim=14, proprio_dim=14, execute_steps=50,
        )

    @classmethod
    def libero(cls) -> "LatentLayout":
        """LIBERO: 9 latent / 33 pixel frames, 16x7 actions, 9-D proprio, wrist + primary."""
        return cls(
            name="libero",
            cameras=("wrist", "primary"),
            camera_sources=("wrist_image", "primary_image"),
            chunk_size=16, action_dim=7, proprio_dim=9, execute_steps=16,
        )

    @classmethod
    def robocasa(cls) -> "LatentLayout":
        """RoboCasa: 11 latent / 41 pixel frames, 32x7 actions (16 executed), 9-D proprio."""
        return cls(
            name="robocasa",
            cameras=("wrist", "primary", "secondary"),
            camera_sources=("wrist_image", "primary_image", "secondary_image"),
            chunk_size=32, action_dim=7, proprio_dim=9, execute_steps=16,
        )

    @classmethod
    def preset(cls, name: str) -> "LatentLayout":
        presets = {"aloha": cls.aloha, "libero": cls.libero, "robocasa": cls.robocasa}
        if name not in presets:
            raise ConfigError(f"unknown layout preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def __post_init__(self) -> None:
        for key in ("chunk_size", "action_dim", "proprio_dim", "execute_steps", "duplicates_per_image",
                    "image_size", "latent_channels", "spatial_compression"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"layout {self.name}: {key} must be a positive integer, got {value!r}")
        for key in ("cameras", "camera_sources"):
            names = getattr(self, key)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"layout {self.name}: {key} must be a non-empty list of names, got {names!r}")
        if len(self.cameras) != len(self.camera_sources):
            raise ConfigError(
                f"layout {self.name}: {len(self.cameras)} cameras but {len(self.camera_sources)} camera_sources"
            )
        if len(set(self.slots)) != len(self.slots):
            raise ConfigError(f"layout {self.name}: camera names collide with other slots: {self.slots}")
        if self.image_size % self.spatial_compression:
            raise ConfigError(
                f"layout {self.name}: image_size {self.image_size} is not a multiple of "
                f"the VAE's spatial compression {self.spatial_compression}"
            )
        for what, n in (("action chunk", self.chunk_size * self.action_dim), ("proprio", self.proprio_dim)):
            if not 0 < n <= self.latent_frame_numel:
                raise ConfigError(
                    f"layout {self.name}: the {what} has {n} values but a latent frame holds "
                    f"{self.latent_frame_numel}; use a larger image_size or a smaller {what}"
                )
        if not 0 < self.execute_steps <= self.chunk_size:
            raise ConfigError(f"layout {self.name}: execute_steps {self.execute_steps} not in 1..{self.chunk_size}")

    # --- derived sizes -----------------------------------------------------------------------
    @property
    def slots(self) -> tuple[str, ...]:
        """Slot name of every latent frame, in order."""
        return (
            ("blank", "proprio")
            + self.cameras
            + ("action", "future_proprio")
            + tuple(f"future_{c}" for c in self.cameras)
            + ("value",)
        )

    @property
    def num_latent_frames(self) -> int:
        return len(self.slots)

    @property
    def num_pixel_frames(self) -> int:
        return 1 + (self.num_latent_frames - 1) * self.duplicates_per_image

    @property
    def latent_hw(self) -> int:
        return self.image_size // self.spatial_compression

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one sample's latent."""
        return (self.latent_channels, self.num_latent_frames, self.latent_hw, self.latent_hw)

    @property
    def latent_frame_numel(self) -> int:
        return self.latent_channels * self.latent_hw * self.latent_hw

    def index(self, slot: str) -> int:
        """Latent frame index of `slot` (e.g. 'action', 'top', 'future_top')."""
        try:
            return self.slots.index(slot)
        except ValueError:
            raise ConfigError(f"layout {self.name} has no slot {slot!r}; slots are {self.slots}") from None

    def pixel_frame(self, latent_index: int) -> int:
        """First pixel frame of a latent frame's segment (the frame to show after a decode)."""
        if latent_index == 0:
            return 0
        return (latent_index - 1) * self.duplicates_per_image + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "LatentLayout":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"layout config has unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
        values = dict(data)
        for key in ("cameras", "camera_sources"):
            if key in values:
                if isinstance(values[key], str) or not isinstance(values[key], (list, tuple)):
                    raise ConfigError(f"layout config: {key} must be a list of names, got {values[key]!r}")
                values[key] = tuple(values[key])
        return cls(**values)


# --- pixel clip ------------------------------------------------------------------------------
def _as_image_batch(image, name: str, size: int) -> torch.Tensor:
    img = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    if img.ndim == 3:
        img = img.unsqueeze(0)
    if img.ndim != 4 or img.shape[-1] != 3 or img.shape[1:3] != (size, size):
        raise ShapeError(
            f"image {name!r} has shape {tuple(img.shape)}, expected ({size}, {size}, 3) or (B, {size}, {size}, 3); "
            "resize to the layout's image_size first"
        )
    if img.dtype != torch.uint8:
        raise ShapeError(f"image {name!r} has dtype {img.dtype}, expected uint8 RGB")
    return img


def _lookup_camera(images: Mapping, layout: LatentLayout, i: int, what: str):
    for key in (layout.cameras[i], layout.camera_sources[i]):
        if key in images:
            return images[key]
    raise ShapeError(
        f"{what} images lack camera {layout.cameras[i]!r} (or {layout.camera_sources[i]!r}); got {sorted(images)}"
    )


def build_pixel_clip(
    layout: LatentLayout, current: Mapping[str, object], future: Mapping[str, object] | None = None
) -> torch.Tensor:
    """The (B, T_pix, H, W, 3) uint8 clip the VAE encodes in one pass.

    Frame 0 is black, then each latent slot gets `duplicates_per_image` identical frames: camera
    slots their image, injected slots black. Without `future` (inference) the future camera slots
    hold copies of the current images, as the reference's placeholders do. Images are keyed by
    camera slot name or camera source name, each (H, W, 3) or (B, H, W, 3) uint8.
    """
    size = layout.image_size
    cur = [_as_image_batch(_lookup_camera(current, layout, i, "current"), layout.cameras[i], size)
           for i in range(len(layout.cameras))]
    fut = cur if future is None else [
        _as_image_batch(_lookup_camera(future, layout, i, "future"), layout.cameras[i], size)
        for i in range(len(layout.cameras))
    ]
    batch = {img.shape[0] for img in cur + fut}
    if len(batch) != 1:
        raise ShapeError(f"camera images disagree on batch size: {sorted(batch)}")
    B = batch.pop()
    device = cur[0].device
    clip_B_T_H_W_3 = torch.zeros((B, layout.num_pixel_frames, size, size, 3), dtype=torch.uint8, device=device)
    ncam = len(layout.cameras)
    images_by_slot = {layout.cameras[i]: cur[i] for i in range(ncam)}
    images_by_slot.update({f"future_{layout.cameras[i]}": fut[i] for i in range(ncam)})
    dup = layout.duplicates_per_image
    for latent_idx, slot in enumerate(layout.slots):
        if slot in images_by_slot:
            start = layout.pixel_frame(latent_idx)
            clip_B_T_H_W_3[:, start:start + dup] = images_by_slot[slot].to(device).unsqueeze(1)
    return clip_B_T_H_W_3


def clip_to_vae_input(clip_B_T_H_W_3: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) clip -> (B, 3, T, H, W) in [-1, 1] (x / 127.5 - 1), the VAE's input."""
    return (clip_B_T_H_W_3.permute(0, 4, 1, 2, 3).to(dtype) / 127.5 - 1.0)


# --- injection / extraction --------------------------------------------------------------------
def _frame_indices(frame, B: int, T: int, device) -> torch.Tensor:
    idx = torch.as_tensor(frame, dtype=torch.long, device=device)
    if idx.ndim == 0:
        idx = idx.expand(B)
    if idx.shape != (B,):
        raise ShapeError(f"frame index has shape {tuple(idx.shape)}, expected a scalar or ({B},)")
    if bool(((idx < -T) | (idx >= T)).any()):
        raise ShapeError(f"frame index {idx.tolist()} out of range for {T} latent frames")
    return idx % T


def _check_latent(latent: torch.Tensor) -> None:
    if latent.ndim != 5:
        raise ShapeError(f"latent has shape {tuple(latent.shape)}, expected (B, C, T, H, W)")


def tile_to_frame(values_B_N: torch.Tensor, C: int, H: int, W: int) -> torch.Tensor:
    """Repeat each row ceil(C*H*W / N) times, truncate to C*H*W and reshape C-order to (B, C, H, W)."""
    B, N = values_B_N.shape
    numel = C * H * W
    if N > numel:
        raise ShapeError(f"{N} values do not fit in a latent frame of {numel} values")
    repeats = -(-numel // N)
    return values_B_N.repeat(1, repeats)[:, :numel].reshape(B, C, H, W)


def _inject(latent_B_C_T_H_W: torch.Tensor, values_B_N: torch.Tensor, frame) -> torch.Tensor:
    _check_latent(latent_B_C_T_H_W)
    B, C, T, H, W = latent_B_C_T_H_W.shape
    if values_B_N.shape[0] != B:
        raise ShapeError(f"values have batch {values_B_N.shape[0]}, latent has batch {B}")
    idx_B = _frame_indices(frame, B, T, latent_B_C_T_H_W.device)
    tiled_B_C_H_W = tile_to_frame(values_B_N.to(latent_B_C_T_H_W.device, latent_B_C_T_H_W.dtype), C, H, W)
    out = latent_B_C_T_H_W.clone()
    out[torch.arange(B, device=out.device), :, idx_B] = tiled_B_C_H_W
    return out


def inject_proprio(latent_B_C_T_H_W: torch.Tensor, proprio_B_D: torch.Tensor, frame) -> torch.Tensor:
    """Copy of the latent with frame `frame` (int or (B,) indices) filled by the tiled proprio."""
    proprio_B_D = torch.as_tensor(proprio_B_D)
    if proprio_B_D.ndim != 2:
        raise ShapeError(f"proprio has shape {tuple(proprio_B_D.shape)}, expected (B, proprio_dim)")
    return _inject(latent_B_C_T_H_W, proprio_B_D, frame)


def inject_action_chunk(latent_B_C_T_H_W: torch.Tensor, actions_B_K_D: torch.Tensor, frame) -> torch.Tensor:
    """Copy of the latent with frame `frame` filled by the row-major flattened, tiled action chunk."""
    actions_B_K_D = torch.as_tensor(actions_B_K_D)
    if actions_B_K_D.ndim != 3:
        raise ShapeError(f"action chunk has shape {tuple(actions_B_K_D.shape)}, expected (B, chunk, action_dim)")
    return _inject(latent_B_C_T_H_W, actions_B_K_D.reshape(actions_B_K_D.shape[0], -1), frame)


def inject_value(latent_B_C_T_H_W: torch.Tensor, value_B: torch.Tensor, frame) -> torch.Tensor:
    """Copy of the latent with frame `frame` set to the value target (in [-1, 1]) everywhere."""
    value_B = torch.as_tensor(value_B)
    B = latent_B_C_T_H_W.shape[0]
    if value_B.numel() != B:
        raise ShapeError(f"value has shape {tuple(value_B.shape)}, expected ({B},)")
    return _inject(latent_B_C_T_H_W, value_B.reshape(B, 1), frame)


def _frame(latent_B_C_T_H_W: torch.Tensor, frame) -> torch.Tensor:
    _check_latent(latent_B_C_T_H_W)
    B, _, T = latent_B_C_T_H_W.shape[:3]
    idx_B = _frame_indices(frame, B, T, latent_B_C_T_H_W.device)
    return latent_B_C_T_H_W[torch.arange(B, device=latent_B_C_T_H_W.device), :, idx_B].reshape(B, -1)


def _mean_of_full_copies(flat_B_N: torch.Tensor, n: int) -> torch.Tensor:
    copies = flat_B_N.shape[1] // n
    if copies == 0:
        raise ShapeError(f"a latent frame of {flat_B_N.shape[1]} values cannot hold {n} values")
    # The partial copy at the end is ignored, as in the reference. The mean accumulates in
    # float64 so that a frame of identical copies decodes to exactly the injected fp32 values.
    full = flat_B_N[:, : copies * n].reshape(flat_B_N.shape[0], copies, n)
    return full.to(torch.float64).mean(dim=1).to(flat_B_N.dtype)


def extract_action_chunk(latent_B_C_T_H_W: torch.Tensor, frame, chunk_size: int, action_dim: int) -> torch.Tensor:
    """(B, chunk, action_dim): mean over the full tiled copies in the action frame (17 for ALOHA)."""
    flat = _frame(latent_B_C_T_H_W, frame)
    return _mean_of_full_copies(flat, chunk_size * action_dim).reshape(-1, chunk_size, action_dim)


def extract_proprio(latent_B_C_T_H_W: torch.Tensor, frame, proprio_dim: int) -> torch.Tensor:
    """(B, proprio_dim): mean over the full tiled copies in a proprio frame."""
    return _mean_of_full_copies(_frame(latent_B_C_T_H_W, frame), proprio_dim)


def extract_value(latent_B_C_T_H_W: torch.Tensor, frame) -> torch.Tensor:
    """(B,) value in [0, 1]: the frame's mean v in [-1, 1] mapped by (v + 1) / 2 and clamped."""
    flat = _frame(latent_B_C_T_H_W, frame)
    v_B = flat.to(torch.float64).mean(dim=1).to(flat.dtype)
    return ((v_B + 1.0) / 2.0).clamp(0.0, 1.0)


def restore_frames(latent_B_C_T_H_W: torch.Tensor, clean_B_C_T_H_W: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
    """Copy of the latent with `frames` taken from `clean` (e.g. DECODE_RESTORE_SLOTS before a decode)."""
    _check_latent(latent_B_C_T_H_W)
    if clean_B_C_T_H_W.shape != latent_B_C_T_H_W.shape:
        raise ShapeError(f"clean latent {tuple(clean_B_C_T_H_W.shape)} != latent {tuple(latent_B_C_T_H_W.shape)}")
    out = latent_B_C_T_H_W.clone()
    idx = list(frames)
    out[:, :, idx] = clean_B_C_T_H_W[:, :, idx].to(out.dtype)
    return out


# --- normalization -----------------------------------------------------------------------------
def _check_stats(x, lo, hi, name: str):
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    dim = x.shape[-1] if x.ndim else 0
    if lo.ndim != 1 or lo.shape != hi.shape:
        raise ShapeError(f"{name} min/max have shapes {lo.shape} and {hi.shape}, expected two equal 1-D vectors")
    if dim != lo.shape[0]:
        raise ShapeError(f"{name} has {dim} dims (shape {tuple(x.shape)}), the statistics have {lo.shape[0]}")
    return lo, hi


def _like(x, arr: np.ndarray):
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float64
        return torch.as_tensor(arr, dtype=dtype, device=x.device)
    return arr


def normalize(x, lo, hi, name: str = "values"):
    """Per-dim min/max to [-1, 1]: 2(x - min)/(max - min) - 1, no clipping (torch or numpy).

    A dimension with max == min (constant in the data) maps to 0 instead of the reference's NaN.
    """
    lo, hi = _check_stats(x, lo, hi, name)
    span = hi - lo
    safe = np.where(span == 0, 1.0, span)
    y = 2.0 * ((x - _like(x, lo)) / _like(x, safe)) - 1.0
    if (span == 0).any():
        zero = _like(x, (span == 0).astype(np.float64))
        y = y * (1 - zero)
    return y


def unnormalize(x, lo, hi, name: str = "values"):
    """Inverse of `normalize`: 0.5 (x + 1)(max - min) + min, no clipping."""
    lo, hi = _check_stats(x, lo, hi, name)
    return 0.5 * (x + 1.0) * _like(x, hi - lo) + _like(x, lo)


# --- conditioning masks ------------------------------------------------------------------------
def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of {ROLES}")


def conditioning_frames(layout: LatentLayout, role: str) -> tuple[int, ...]:
    """Latent frames given clean (mask = 1) for a model role (reference §3.2).

    policy: blank, proprio, current images; world_model: + action; value_v_sas (V(s,a,s')):
    everything but the value; value_v_s (V(s')): blank + future proprio + future images;
    q_sa (Q(s,a)): blank, proprio, current images, action.
    """
    _check_role(role)
    slots = layout.slots
    action = layout.index("action")
    value = layout.index("value")
    if role == "policy":
        return tuple(range(action))
    if role in ("world_model", "q_sa"):
        return tuple(range(action + 1))
    if role == "value_v_sas":
        return tuple(i for i in range(len(slots)) if i != value)
    # value_v_s: the current state and action are hidden, only s' conditions the value.
    return (0,) + tuple(range(action + 1, value))


def noised_frames(layout: LatentLayout, role: str) -> tuple[int, ...]:
    """Frames fed as noise and denoised but ignored: V(s') hides s and a, Q(s,a) hides s'."""
    _check_role(role)
    action = layout.index("action")
    value = layout.index("value")
    if role == "value_v_s":
        return tuple(range(1, action + 1))
    if role == "q_sa":
        return tuple(range(action + 1, value))
    return ()


def generated_frames(layout: LatentLayout, role: str) -> tuple[int, ...]:
    """Frames whose prediction is the output of the role (mask = 0 and not merely noised)."""
    cond = set(conditioning_frames(layout, role))
    hidden = set(noised_frames(layout, role))
    return tuple(i for i in range(layout.num_latent_frames) if i not in cond and i not in hidden)


def condition_mask(
    layout: LatentLayout, role: str, batch_size: int = 1, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(B, 1, T, H, W) mask, 1 on the role's conditioning frames."""
    C, T, H, W = layout.latent_shape
    mask_B_1_T_H_W = torch.zeros((batch_size, 1, T, H, W), dtype=dtype, device=device)
    mask_B_1_T_H_W[:, :, list(conditioning_frames(layout, role))] = 1
    return mask_B_1_T_H_W


def loss_frame_mask(layout: LatentLayout, role: str, batch_size: int = 1, device=None) -> torch.Tensor:
    """(B, T) loss weight per frame: V(s') and Q(s,a) samples train only the value frame.

    The other roles weight every frame 1 (their conditioning frames have zero loss anyway).
    """
    T = layout.num_latent_frames
    mask_B_T = torch.ones((batch_size, T), device=device)
    if role in ("value_v_s", "q_sa"):
        mask_B_T.zero_()
        mask_B_T[:, layout.index("value")] = 1
    else:
        _check_role(role)
    return mask_B_T


__all__ = [
    "LatentLayout", "ROLES", "INJECTED_SLOTS", "DECODE_RESTORE_SLOTS",
    "build_pixel_clip", "clip_to_vae_input", "tile_to_frame",
    "inject_proprio", "inject_action_chunk", "inject_value",
    "extract_action_chunk", "extract_proprio", "extract_value", "restore_frames",
    "normalize", "unnormalize",
    "conditioning_frames", "noised_frames", "generated_frames", "condition_mask", "loss_frame_mask",
]
