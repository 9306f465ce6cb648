"""Cosmos Policy inference: observation -> cached conditioning latents -> action chunk, future state and value.

Owns the policy, world-model and value roles (masks of reference §3.2), the test-time preprocessing and the decode of predicted frames.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from cosmos_policy_core.checkpoint import DeploySettings
from cosmos_policy_core.diffusion import DiffusionConfig, initial_noise, sample
from cosmos_policy_core.engines.base import Denoiser
from cosmos_policy_core.engines.encoder import constant_prefix_frames
from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.layout import (
    DECODE_RESTORE_SLOTS, TRAIN_CROP_AREA, LatentLayout, build_pixel_clip, clip_to_vae_input, condition_mask,
    conditioning_frames, extract_action_chunk, extract_proprio, extract_value, inject_proprio, restore_frames,
)
from cosmos_policy_core.nn.wan_vae import EncoderStream
from cosmos_policy_core.runtime.images import prepare_images, prepare_images_tensor

log = logging.getLogger(__name__)

# Value modes of the reference and the layout role that implements each (reference §3.2 c1-c3).
VALUE_MODES = {"V(s')": "value_v_s", "V(s,a,s')": "value_v_sas", "Q(s,a)": "q_sa"}
TIMING_KEYS = ("preprocess", "vae_encode", "denoise", "decode", "postprocess")


@dataclass(frozen=True)
class Observation:
    """One synchronized observation in robot units.

    images: camera name (cam_high, cam_left_wrist, cam_right_wrist — the layout's camera_sources —
    or the model's slot names) -> (H, W, 3) uint8 RGB of any size. proprio: 14 joint values (rad,
    normalized grippers) as the robot reports them. timestamp: seconds of the observation's clock.
    """

    images: Mapping[str, np.ndarray]
    proprio: np.ndarray
    task: str
    timestamp: float = 0.0


@dataclass
class ActionChunk:
    """One policy output in robot units, stamped with the time of the observation it answers."""

    actions: np.ndarray                                  # (chunk, action_dim) float64, unnormalized
    value: float                                         # in [0, 1]
    timestamp: float
    seed: int
    num_steps: int
    future_proprio: np.ndarray | None = None             # (proprio_dim,) robot units, predicted at t + chunk
    future_images: dict[str, np.ndarray] | None = None   # camera source name -> (S, S, 3) uint8
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (TIMING_KEYS)


@dataclass(frozen=True)
class PolicyConfig:
    """Inference options (defaults: the reference ALOHA deployment, plus action clipping)."""

    num_steps: int = 10            # denoising steps of the action sample (deploy.py: 10)
    crop_area: float | None = TRAIN_CROP_AREA  # test-time center crop matching the training crops
    # Clamp normalized actions to [-1, 1] before unnormalizing, so a chunk never leaves the range of
    # the demonstrations. The reference does not clip; a trained model stays inside anyway.
    clip_actions: bool = True
    vae_chunk_frames: int | None = None  # pixel frames per encoder call; None: one pass (same latents)
    vae_decode_chunk: int | None = None  # latent frames per decoder call; None: one pass (same images)
    # Encode the clip's black prefix (blank + proprio slots, 5 of ALOHA's 41 frames) once and resume the
    # causal encoder from its state on every call: the same latents, less work.
    vae_prefix_cache: bool = True
    # Encode the whole clip up front (the reference's cost) instead of only the frames the roles condition on
    # (ALOHA: 17 of 41 pixel frames); the rest is encoded when a decode of predicted frames needs it. The VAE
    # is causal, so the conditioning latents and the actions are the same either way.
    vae_encode_whole_clip: bool = False
    # Resize / crop the camera frames as torch ops on the policy's device instead of with PIL on the CPU: the
    # same images bit for bit. None: on the device when it is a GPU.
    preprocess_on_device: bool | None = None
    sample_batch: int = 64         # most rows per network call (larger batches are split)

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.sample_batch < 1:
            raise ConfigError(f"sample_batch must be >= 1, got {self.sample_batch}")


def policy_config_for(checkpoint: str | Path, **overrides) -> PolicyConfig:
    """The inference options of a checkpoint's deploy settings (denoising steps, crop), then `overrides`.

    See `DeploySettings.from_checkpoint`: the checkpoint's config.json `deploy` section, or for an older
    directory what its training implies.
    """
    deploy = DeploySettings.from_checkpoint(checkpoint)
    implied = {"num_steps": deploy.num_steps, "crop_area": deploy.crop_area}
    return PolicyConfig(**{**implied, **overrides})


@dataclass(frozen=True)
class ConditioningCache:
    """What one observation contributes to every sample: computed once, shared by all candidates and roles.

    clean: the VAE latent of the 41-frame clip before any injection (what the decoder needs in the
    injected slots); gt: clean with the normalized proprio injected (the conditioning latent).
    clean_frames: how many leading latent frames of `clean` (and `gt`) are encoded: only those the roles
    condition on unless `vae_encode_whole_clip`; the rest are zeros, which no role reads (the world model and
    the value take those frames from an earlier sample), and `encoding` encodes them when a decode needs them.
    """

    clean_1_C_T_H_W: torch.Tensor
    gt_1_C_T_H_W: torch.Tensor
    proprio_1_D: torch.Tensor          # normalized to [-1, 1]
    text_1_L_D: torch.Tensor
    images: dict[str, np.ndarray]      # camera source name -> preprocessed (S, S, 3) uint8
    task: str
    timestamp: float
    timings: dict[str, float]
    clean_frames: int | None = None    # None: all of them
    encoding: "ClipEncoding | None" = field(default=None, repr=False, compare=False)


class ClipEncoding:
    """The clean VAE latents of one pixel clip, encoded only as far as they have been needed.

    The VAE is causal: latent frame k depends on the pixel frames up to its own only, so the frames the roles
    condition on are final before the rest of the clip is seen. `through(k)` encodes on to latent frame k,
    resuming the encoder stream where it stopped (after a fast-path encoder, which keeps no stream, the VAE
    encodes the missing frames from the cached black prefix).
    """

    def __init__(self, policy: "CosmosPolicy", clip_B_T_H_W_3: torch.Tensor, latents_B_C_T_H_W: torch.Tensor,
                 stream: EncoderStream | None) -> None:
        self._policy = policy
        self._clip = clip_B_T_H_W_3
        self._latents = latents_B_C_T_H_W
        self._stream = stream

    @property
    def num_frames(self) -> int:
        """Latent frames encoded so far."""
        return self._latents.shape[2]

    @property
    def latents(self) -> torch.Tensor:
        """(B, C, num_frames, H, W) float32: the frames encoded so far."""
        return self._latents

    @torch.no_grad()
    def through(self, last: int) -> torch.Tensor:
        """(B, C, last + 1, H, W) float32: latent frames 0..last, encoding those not encoded yet."""
        n = self.num_frames
        if last >= n:
            if self._stream is None:
                latents, self._stream = self._policy._encode_eager(self._clip, last + 1)
                more = latents[:, :, n:]
            else:
                more = self._policy._push(self._stream, self._clip, n, last + 1)
            self._latents = torch.cat([self._latents, more], dim=2)
        return self._latents[:, :, :last + 1]


def _now() -> float:
    return time.perf_counter()


def check_planning_checkpoint(policy_ckpt, planning_ckpt, policy_path, planning_path) -> None:
    """Raise CheckpointError unless the planning checkpoint reads what the policy writes.

    The planning network continues the policy's latents: it must share the layout, the VAE (latent space),
    the statistics (normalized proprio and actions) and the task embeddings. A planning fine-tune with
    `--init POLICY` on the policy's data shares all four.
    """
    from cosmos_policy_core.errors import CheckpointError

    fix = f"fine-tune it from this policy: `cosmos-aloha train --config planning --init {policy_path} ...`"
    if planning_ckpt.layout != policy_ckpt.layout:
        raise CheckpointError(f"planning checkpoint {planning_path} has another latent layout than the policy "
                              f"{policy_path} ({planning_ckpt.layout.name}, {planning_ckpt.layout.image_size} px vs "
                              f"{policy_ckpt.layout.name}, {policy_ckpt.layout.image_size} px); {fix}")
    if planning_ckpt.vae_state is not None and policy_ckpt.vae_state is not None:
        same = planning_ckpt.vae_config == policy_ckpt.vae_config and planning_ckpt.vae_state.keys() == \
            policy_ckpt.vae_state.keys() and all(torch.equal(v, policy_ckpt.vae_state[k])
                                                 for k, v in planning_ckpt.vae_state.items())
        if not same:
            raise CheckpointError(f"planning checkpoint {planning_path} was trained on another VAE than the policy "
                                  f"{policy_path}: its world model and value read a different latent space; {fix}")
    if planning_ckpt.stats is not None and planning_ckpt.stats.to_json_dict() != policy_ckpt.stats.to_json_dict():
        raise CheckpointError(f"planning checkpoint {planning_path} normalizes proprio and actions with other "
                              f"statistics than the policy {policy_path}; {fix}")
    for task, emb in planning_ckpt.text_embeddings.items():
        mine = policy_ckpt.text_embeddings.get(task)
        if mine is not None and (mine.shape != emb.shape or not torch.equal(mine.float(), emb.float())):
            raise CheckpointError(f"planning checkpoint {planning_path} embeds the task {task!r} differently from "
                                  f"the policy {policy_path}; {fix}")


class CosmosPolicy:
    """The policy, world model and value function of one Cosmos Policy checkpoint.

    `denoiser` runs the policy network; `planning_denoiser` (optional) the separately fine-tuned
    planning network used by `predict_future` and `value` (the policy network otherwise).
    """

    def __init__(
        self,
        layout: LatentLayout,
        vae: torch.nn.Module,
        denoiser: Denoiser,
        stats,
        text_embeddings: Mapping[str, torch.Tensor],
        *,
        diffusion: DiffusionConfig = DiffusionConfig(),
        planning_denoiser: Denoiser | None = None,
        vae_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        config: PolicyConfig = PolicyConfig(),
    ) -> None:
        if stats is None:
            raise ConfigError("a policy needs dataset statistics (stats.json) to normalize proprio and actions")
        stats.check_layout(layout)
        if not text_embeddings:
            raise ConfigError("a policy needs at least one task text embedding; compute some with "
                              "`cosmos-aloha text-embed`")
        self.layout = layout
        self.vae = vae.eval()
        self.denoiser = denoiser
        self.planning_denoiser = planning_denoiser
        self.stats = stats
        self.diffusion = diffusion
        self.config = config
        self.device = denoiser.device
        self._vae_encoder = vae_encoder
        self._prefix: tuple[tuple, object, torch.Tensor] | None = None  # (key, encoder stream, its latents)
        self._text = {task: emb.detach().float().reshape(1, *emb.shape[-2:]) for task, emb in text_embeddings.items()}

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        engine: str = "torch",
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        export_dir: str | Path | None = None,
        compile_mode: str | None = None,
        planning_checkpoint: str | Path | None = None,
        config: PolicyConfig | None = None,
    ) -> "CosmosPolicy":
        """Load our checkpoint directory (config.json + safetensors + stats + text embeddings).

        config: None = the options of its deploy settings (`policy_config_for`); pass
        `policy_config_for(path, num_steps=...)` to change some and keep those.

        engine, device ("auto" = cuda when available), dtype, export_dir and compile_mode are resolved by
        `engines.resolve.resolve_engine`: "torch" (eager), "compile" (torch.compile of the DiT and the VAE
        encoder), "onnx" (ONNX Runtime) or "tensorrt" (TensorRT, GPU) on the graphs `cosmos-aloha export`
        wrote (default <checkpoint>/export). A planning checkpoint runs on torch / compile as the policy
        does, on torch when the policy runs exported graphs.
        """
        from cosmos_policy_core.checkpoint import load_checkpoint_dir
        from cosmos_policy_core.engines.resolve import load_engines, resolve_engine

        spec = resolve_engine(engine, device=device, dtype=dtype, checkpoint=path, export_dir=export_dir,
                              compile_mode=compile_mode)
        ckpt = load_checkpoint_dir(path)
        vae = ckpt.build_vae(spec.vae_dtype).to(spec.device)
        denoiser, vae_encoder = load_engines(spec, ckpt, checkpoint_dir=path)
        planning = None
        if planning_checkpoint is not None:
            planning_ckpt = load_checkpoint_dir(planning_checkpoint)
            check_planning_checkpoint(ckpt, planning_ckpt, path, planning_checkpoint)
            planning_spec = spec if spec.engine in ("torch", "compile") else resolve_engine(
                "torch", device=spec.device, dtype=spec.vae_dtype)
            planning, _ = load_engines(planning_spec, planning_ckpt, name="planning")
        return cls(ckpt.layout, vae, denoiser, ckpt.stats, ckpt.text_embeddings, diffusion=ckpt.diffusion,
                   planning_denoiser=planning, vae_encoder=vae_encoder,
                   config=config if config is not None else policy_config_for(path))

    @classmethod
    def from_reference(
        cls,
        pt: str | Path,
        stats_json: str | Path,
        t5_pickle: str | Path,
        vae_path: str | Path,
        *,
        model_config=None,
        layout: LatentLayout | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        engine: str = "torch",
        planning_pt: str | Path | None = None,
        config: PolicyConfig = PolicyConfig(),
        trust_pickle: bool = False,
    ) -> "CosmosPolicy":
        """The released files: policy `.pt` (`net.` keys), aloha_dataset_statistics.json,
        aloha_t5_embeddings.pkl and the Wan2.1 tokenizer.pth; optionally the planning model `.pt`.

        engine: "torch" or "compile" (the released files have no export directory)."""
        from cosmos_policy_core.checkpoint import load_reference_checkpoint, read_dataset_stats, read_t5_embeddings
        from cosmos_policy_core.nn.config import ModelConfig
        from cosmos_policy_core.nn.dit import CosmosDiT
        from cosmos_policy_core.nn.wan_vae import WanVAE

        layout = layout or LatentLayout.aloha()
        model_config = model_config or ModelConfig.cosmos_predict2_2b()
        stats = read_dataset_stats(stats_json, layout)
        text = read_t5_embeddings(t5_pickle)
        # The reference runs both networks in bf16 (VAE included, is_amp=False).
        vae = WanVAE.from_checkpoint(vae_path, dtype=dtype, device=device)

        def load(path) -> torch.nn.Module:
            net = CosmosDiT(model_config)
            load_reference_checkpoint(net, path, trust_pickle=trust_pickle)
            return net.to(device=device, dtype=dtype)

        from cosmos_policy_core.engines.encoder import TorchClipEncoder
        from cosmos_policy_core.engines.resolve import resolve_engine
        from cosmos_policy_core.engines.torch_engine import TorchDenoiser

        if engine not in ("torch", "compile"):
            raise ConfigError(f"the released checkpoint files run on engine 'torch' or 'compile', not {engine!r}; "
                              "convert them to a checkpoint directory to export them")
        spec = resolve_engine(engine, device=device, dtype=dtype)
        diffusion = DiffusionConfig.reference()

        def denoiser(path, name: str) -> TorchDenoiser:
            return TorchDenoiser(load(path), compile=spec.compile_mode, sigma_conditional=diffusion.sigma_conditional,
                                 name=name)

        planning = denoiser(planning_pt, "planning") if planning_pt is not None else None
        encoder = TorchClipEncoder(vae, layout, compile=spec.compile_mode) if engine == "compile" else None
        return cls(layout, vae, denoiser(pt, "policy"), stats, text, diffusion=diffusion, planning_denoiser=planning,
                   vae_encoder=encoder, config=config)

    # --- tasks -------------------------------------------------------------------------------------
    @property
    def known_tasks(self) -> tuple[str, ...]:
        return tuple(sorted(self._text))

    def text_embedding(self, task: str) -> torch.Tensor:
        """(1, L, D) float32 embedding of a known task; unknown tasks fail (no silent T5-11B run)."""
        emb = self._text.get(task)
        if emb is None:
            known = "\n  ".join(repr(t) for t in self.known_tasks)
            raise ConfigError(
                f"unknown task {task!r}; this checkpoint has embeddings for:\n  {known}\n"
                "use one of these strings exactly, or compute an embedding with `cosmos-aloha text-embed` "
                "and add it to the checkpoint's text_embeddings.safetensors"
            )
        return emb

    # --- conditioning ------------------------------------------------------------------------------
    def preprocess_images(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """camera source name -> the (S, S, 3) uint8 image the model sees (reference test-time pipeline)."""
        return {name: image.cpu().numpy() for name, image in self._preprocess(images).items()}

    def _preprocess(self, images: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """camera source name -> (S, S, 3) uint8 tensor: with PIL on the CPU, or the same integer arithmetic as
        torch ops on the policy's device (`preprocess_on_device`)."""
        lay = self.layout
        frames, names = [], []
        for slot, source in zip(lay.cameras, lay.camera_sources):
            if source in images:
                frames.append(images[source])
            elif slot in images:
                frames.append(images[slot])
            else:
                raise ShapeError(f"observation lacks camera {source!r}; it has {sorted(images)}")
            names.append(source)
        on_device = self.config.preprocess_on_device
        if on_device is None:
            on_device = self.device.type == "cuda"
        if on_device:
            processed = prepare_images_tensor(frames, lay.image_size, names, self.config.crop_area, self.device)
            return dict(zip(names, processed.permute(0, 2, 3, 1)))
        processed = prepare_images(frames, lay.image_size, names, self.config.crop_area)
        return {name: torch.from_numpy(image) for name, image in zip(names, processed)}

    def normalize_proprio(self, proprio) -> torch.Tensor:
        p = np.asarray(proprio, dtype=np.float64).reshape(-1)
        if p.shape[0] != self.layout.proprio_dim:
            raise ShapeError(f"proprio has {p.shape[0]} values, the {self.layout.name} layout needs "
                             f"{self.layout.proprio_dim}")
        if not np.isfinite(p).all():
            raise ShapeError(f"proprio has non-finite values: {p.tolist()}")
        return torch.from_numpy(self.stats.normalize_proprio(p)).float().reshape(1, -1)

    @torch.no_grad()
    def encode_clip(self, clip_B_T_H_W_3: torch.Tensor, latent_frames: int | None = None) -> "ClipEncoding":
        """Encode a uint8 pixel clip's first `latent_frames` latent frames (None: all) on the policy's device.

        The returned `ClipEncoding` encodes later frames when asked. With a fast-path encoder (engine
        compile / onnx / tensorrt) the conditioning frames come from its graph, any later ones from the VAE.
        """
        lay = self.layout
        total = 1 + (clip_B_T_H_W_3.shape[1] - 1) // lay.duplicates_per_image
        wanted = total if latent_frames is None else latent_frames
        if not 0 < wanted <= total:
            raise ShapeError(f"cannot encode {wanted} latent frames of a clip of {clip_B_T_H_W_3.shape[1]} "
                             "pixel frames")
        if self._vae_encoder is None:
            latents, stream = self._encode_eager(clip_B_T_H_W_3, wanted)
            return ClipEncoding(self, clip_B_T_H_W_3, latents, stream)
        conditioning = max(conditioning_frames(lay, "policy")) + 1
        video = clip_to_vae_input(clip_B_T_H_W_3[:, :self._pixel_end(conditioning)].to(self.device))
        head = self._vae_encoder(video).float().to(self.device)
        encoding = ClipEncoding(self, clip_B_T_H_W_3, head[:, :, :wanted], None)
        encoding.through(wanted - 1)
        return encoding

    def _pixel_end(self, latent_frames: int) -> int:
        """How many pixel frames the first `latent_frames` latent frames are encoded from (1 + 4 (n - 1))."""
        return 1 + self.layout.duplicates_per_image * (latent_frames - 1)

    def _push(self, stream: EncoderStream, clip_B_T_H_W_3: torch.Tensor, first: int, end: int) -> torch.Tensor:
        """Latent frames [first, end) of the clip from an encoder stream that has seen the frames before them."""
        pixels = clip_B_T_H_W_3[:, self._pixel_end(first) if first else 0:self._pixel_end(end)]
        video = clip_to_vae_input(pixels.to(self.device), dtype=self.vae_dtype)
        return stream.push_chunks(video, self.config.vae_chunk_frames).float()

    def _encode_eager(self, clip_B_T_H_W_3: torch.Tensor, latent_frames: int) -> tuple[torch.Tensor, EncoderStream]:
        """The clip's first `latent_frames` latent frames with the VAE's encoder stream, and the stream to go on."""
        prefix_pixels = constant_prefix_frames(self.layout)
        prefix = 1 + (prefix_pixels - 1) // self.layout.duplicates_per_image if prefix_pixels else 0
        if not (self.config.vae_prefix_cache and 0 < prefix < latent_frames
                and not clip_B_T_H_W_3[:, :prefix_pixels].any()):
            stream = self.vae.encoder_stream()
            return self._push(stream, clip_B_T_H_W_3, 0, latent_frames), stream
        key = (clip_B_T_H_W_3.shape[0], tuple(clip_B_T_H_W_3.shape[2:]), self.vae_dtype, self.device)
        if self._prefix is None or self._prefix[0] != key:
            stream = self.vae.encoder_stream()
            self._prefix = (key, stream, self._push(stream, clip_B_T_H_W_3, 0, prefix))
        _, prefix_stream, prefix_latents = self._prefix
        stream = prefix_stream.fork()
        rest = self._push(stream, clip_B_T_H_W_3, prefix, latent_frames)
        return torch.cat([prefix_latents, rest], dim=2), stream

    @torch.no_grad()
    def encode_observation(self, obs: Observation) -> ConditioningCache:
        """Preprocess + the causal VAE encode of the clip's conditioning frames (reference §2.2): what every role
        conditions on."""
        t0 = self._tick()
        lay = self.layout
        text = self.text_embedding(obs.task).to(self.device)
        images = self._preprocess(obs.images)
        proprio = self.normalize_proprio(obs.proprio).to(self.device)
        clip = build_pixel_clip(lay, images)
        t1 = self._tick()
        wanted = None if self.config.vae_encode_whole_clip else max(conditioning_frames(lay, "policy")) + 1
        encoding = self.encode_clip(clip, wanted)
        head = encoding.latents
        C, T, H, W = lay.latent_shape
        clean = torch.cat([head, head.new_zeros(head.shape[0], C, T - head.shape[2], H, W)], dim=2)
        gt = inject_proprio(clean, proprio, lay.index("proprio"))
        t2 = self._tick()
        images = {name: image.cpu().numpy() for name, image in images.items()}
        return ConditioningCache(clean, gt, proprio, text, images, obs.task, float(obs.timestamp),
                                 {"preprocess": t1 - t0, "vae_encode": t2 - t1},
                                 clean_frames=None if encoding.num_frames == T else encoding.num_frames,
                                 encoding=encoding)

    # --- sampling per role -------------------------------------------------------------------------
    def _denoiser_for(self, model: str) -> Denoiser:
        if model == "policy":
            return self.denoiser
        if model == "planning":
            return self.planning_denoiser or self.denoiser
        raise ConfigError(f"model must be 'policy' or 'planning', got {model!r}")

    @torch.no_grad()
    def sample_role(
        self,
        cond: ConditioningCache,
        role: str,
        prior_B_C_T_H_W: torch.Tensor,
        seeds: Sequence[int],
        num_steps: int,
        *,
        proprio_B_D: torch.Tensor | None = None,
        model: str = "policy",
    ) -> torch.Tensor:
        """One sample per seed of a model role, conditioned on `prior`'s conditioning frames.

        The proprio frame is re-injected from `proprio_B_D` (default: the observation's) before the
        role's mask applies, as the reference does; with V(s') the mask then hides it. Rows are
        independent: row i equals a batch-1 call with seeds[i] (up to float rounding).
        """
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ConfigError("sample_role needs at least one seed")
        B = len(seeds)
        if prior_B_C_T_H_W.shape[0] not in (1, B):
            raise ShapeError(f"prior latent has batch {prior_B_C_T_H_W.shape[0]}, expected 1 or {B} (one per seed)")
        proprio = cond.proprio_1_D if proprio_B_D is None else proprio_B_D.to(self.device, torch.float32)
        if proprio.shape[0] not in (1, B):
            raise ShapeError(f"proprio has batch {proprio.shape[0]}, expected 1 or {B}")
        prior = prior_B_C_T_H_W.to(self.device, torch.float32)
        rows = max(prior.shape[0], proprio.shape[0])
        gt = inject_proprio(prior.expand(rows, *prior.shape[1:]), proprio.expand(rows, -1),
                            self.layout.index("proprio"))
        mask = condition_mask(self.layout, role, 1, device=self.device)
        denoiser = self._denoiser_for(model)
        out = []
        step = self.config.sample_batch
        for start in range(0, B, step):
            sl = slice(start, min(B, start + step))
            gt_part = gt if gt.shape[0] == 1 else gt[sl]
            noise = initial_noise(seeds[sl], self.layout.latent_shape, self.diffusion.sigma_max, device=self.device)
            x0_fn = denoiser.bind(gt_part, mask, cond.text_1_L_D)
            out.append(sample(x0_fn, noise, num_steps, self.diffusion))
        return torch.cat(out)

    def sample_actions(self, cond: ConditioningCache, seeds: Sequence[int], num_steps: int | None = None,
                       *, prior_B_C_T_H_W: torch.Tensor | None = None,
                       proprio_B_D: torch.Tensor | None = None) -> torch.Tensor:
        """Policy samples (frames 0-4 conditioning): action chunk, future state and value in one latent."""
        prior = cond.gt_1_C_T_H_W if prior_B_C_T_H_W is None else prior_B_C_T_H_W
        return self.sample_role(cond, "policy", prior, seeds, num_steps or self.config.num_steps,
                                proprio_B_D=proprio_B_D)

    def predict_future(self, cond: ConditioningCache, action_latent_B_C_T_H_W: torch.Tensor, seeds: Sequence[int],
                       num_steps: int = 1, *, proprio_B_D: torch.Tensor | None = None,
                       model: str = "planning") -> torch.Tensor:
        """World model (frames 0-5 conditioning): the future state given the generated action latent as-is."""
        return self.sample_role(cond, "world_model", action_latent_B_C_T_H_W, seeds, num_steps,
                                proprio_B_D=proprio_B_D, model=model)

    def value(self, cond: ConditioningCache, latent_B_C_T_H_W: torch.Tensor, seeds: Sequence[int],
              num_steps: int = 1, *, mode: str = "V(s')", proprio_B_D: torch.Tensor | None = None,
              model: str = "planning") -> torch.Tensor:
        """(B,) values in [0, 1] of a value sample.

        V(s') and V(s,a,s') condition on a world-model sample's future frames; Q(s,a) on the action
        sample (frames 0-5) with the future frames fed as noise.
        """
        if mode not in VALUE_MODES:
            raise ConfigError(f"unknown value mode {mode!r}; choose one of {tuple(VALUE_MODES)}")
        latent = self.sample_role(cond, VALUE_MODES[mode], latent_B_C_T_H_W, seeds, num_steps,
                                  proprio_B_D=proprio_B_D, model=model)
        return extract_value(latent, self.layout.index("value"))

    # --- decoding ----------------------------------------------------------------------------------
    def actions_from_latent(self, latent_B_C_T_H_W: torch.Tensor) -> np.ndarray:
        """(B, chunk, action_dim) float64 in robot units (17-copy mean, then min/max unnormalization)."""
        lay = self.layout
        norm = extract_action_chunk(latent_B_C_T_H_W, lay.index("action"), lay.chunk_size, lay.action_dim)
        norm = norm.double().cpu().numpy()
        if self.config.clip_actions:
            norm = np.clip(norm, -1.0, 1.0)
        return self.stats.unnormalize_actions(norm)

    def normalized_future_proprio(self, latent_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        return extract_proprio(latent_B_C_T_H_W, self.layout.index("future_proprio"), self.layout.proprio_dim)

    def future_proprio_from_latent(self, latent_B_C_T_H_W: torch.Tensor) -> np.ndarray:
        """(B, proprio_dim) predicted proprio at t + chunk in robot units (the reference never decodes it)."""
        norm = self.normalized_future_proprio(latent_B_C_T_H_W).double().cpu().numpy()
        return self.stats.unnormalize_proprio(norm)

    def values_from_latent(self, latent_B_C_T_H_W: torch.Tensor) -> np.ndarray:
        return extract_value(latent_B_C_T_H_W, self.layout.index("value")).double().cpu().numpy()

    @torch.no_grad()
    def decode_future_images(self, cond: ConditioningCache, latent_B_C_T_H_W: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """Per row: camera source name -> predicted (S, S, 3) uint8 image at t + chunk.

        Injected slots are reset to the clean black-frame latents first (reference §2.4). The
        decoder is causal, so the value frame after the last image is not decoded at all.
        """
        lay = self.layout
        B = latent_B_C_T_H_W.shape[0]
        restore = [lay.index(s) for s in DECODE_RESTORE_SLOTS]
        clean = cond.clean_1_C_T_H_W
        if cond.clean_frames is not None and cond.clean_frames <= max(restore):
            # Restored slots after the conditioning frames (ALOHA: action, future proprio): encoded now, and
            # only up to the last of them (pixel frame 24 of 41).
            head = cond.encoding.through(max(restore))
            clean = torch.cat([head, clean[:, :, head.shape[2]:]], dim=2)
        clean = clean.expand(B, *clean.shape[1:])
        z = restore_frames(latent_B_C_T_H_W.to(self.device, torch.float32), clean, restore)
        future_idx = [lay.index(f"future_{c}") for c in lay.cameras]
        z = z[:, :, : max(future_idx) + 1]
        video_B_3_T_H_W = self.vae.decode(z.to(self.vae_dtype), chunk_latents=self.config.vae_decode_chunk).float()
        pixels = ((video_B_3_T_H_W + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
        out = []
        for b in range(B):
            out.append({source: pixels[b, :, lay.pixel_frame(i)].permute(1, 2, 0).cpu().numpy()
                        for source, i in zip(lay.camera_sources, future_idx)})
        return out

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    # --- the policy call -----------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, obs: Observation | ConditioningCache, seed: int = 0, num_steps: int | None = None,
              cancelled: Callable[[], bool] | None = None) -> "Inference | None":
        """The policy call in stages: the chunk first, the predicted frames only when asked for.

        Everything that runs the policy (the ROS node, `act`, `sim eval`) calls this, so preprocessing,
        engine and deploy settings are the same everywhere. `cancelled` is checked between the encode and
        the sample (a node being deactivated): None is returned then. Pass a `ConditioningCache` instead of
        an observation to reuse an earlier encode.
        """
        num_steps = num_steps or self.config.num_steps
        cond = obs if isinstance(obs, ConditioningCache) else self.encode_observation(obs)
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        if not isinstance(obs, ConditioningCache):
            timings.update(cond.timings)
        if cancelled is not None and cancelled():
            return None
        t0 = self._tick()
        latent = self.sample_actions(cond, [seed], num_steps)
        t1 = self._tick()
        chunk = ActionChunk(
            actions=self.actions_from_latent(latent)[0],
            value=float(self.values_from_latent(latent)[0]),
            timestamp=cond.timestamp, seed=int(seed), num_steps=int(num_steps),
            future_proprio=self.future_proprio_from_latent(latent)[0],
        )
        timings.update(denoise=t1 - t0, postprocess=self._tick() - t1)
        chunk.timings = timings
        return Inference(self, cond, latent, chunk)

    def act(self, obs: Observation | ConditioningCache, seed: int = 0, num_steps: int | None = None,
            return_future_images: bool = True) -> ActionChunk:
        """One action chunk (value and future state from the same sample, as the base deployment), with
        its predicted frames decoded unless `return_future_images` is False."""
        result = self.infer(obs, seed=seed, num_steps=num_steps)
        if return_future_images:
            result.future_images()
        return result.chunk

    def _tick(self) -> float:
        """A timing point: on a GPU, after the queued work has finished (else stages report launch time)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return _now()

    def with_config(self, **changes) -> "CosmosPolicy":
        """A policy sharing these networks with some PolicyConfig fields changed."""
        twin = object.__new__(CosmosPolicy)
        twin.__dict__.update(self.__dict__)
        twin.config = replace(self.config, **changes)
        return twin


@dataclass
class Inference:
    """One policy call: the chunk, and what decodes its predicted frames later (after the chunk is out)."""

    policy: CosmosPolicy
    cond: ConditioningCache
    latent_1_C_T_H_W: torch.Tensor
    chunk: ActionChunk

    def future_images(self) -> dict[str, np.ndarray]:
        """Camera source name -> predicted (S, S, 3) uint8 frame at t + chunk; decoded once, kept on the chunk."""
        if self.chunk.future_images is None:
            t0 = self.policy._tick()
            self.chunk.future_images = self.policy.decode_future_images(self.cond, self.latent_1_C_T_H_W)[0]
            self.chunk.timings["decode"] = self.policy._tick() - t0
        return self.chunk.future_images


__all__ = ["Observation", "ActionChunk", "PolicyConfig", "policy_config_for", "ConditioningCache", "ClipEncoding",
           "CosmosPolicy", "Inference", "VALUE_MODES", "TIMING_KEYS", "check_planning_checkpoint"]
