"""The single-stage trainer: policy, world-model and value samples in one diffusion loss, single process or torchrun.

Owns batch assembly (one VAE encode per sample clip, injection, role masks), AdamW + LR schedule, DDP/FSDP, checkpoints, resume, metrics and plots.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from cosmos_policy_core.checkpoint import (
    STATS_FILE, CosmosCheckpoint, DatasetStats, load_checkpoint_dir, load_into, read_dataset_stats,
    read_reference_state_dict, read_t5_embeddings, read_text_embeddings, save_checkpoint_dir,
)
from cosmos_policy_core.diffusion import diffusion_loss, initial_noise, make_x0_fn, sample, sample_training_sigma
from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.layout import (
    LatentLayout, build_pixel_clip, clip_to_vae_input, condition_mask, extract_action_chunk, inject_action_chunk,
    inject_proprio, inject_value, loss_frame_mask,
)
from cosmos_policy_core.nn.dit import CosmosDiT
from cosmos_policy_core.nn.wan_vae import WanVAE
from cosmos_policy_core.train.augment import augment_sample_images
from cosmos_policy_core.train.config import TrainConfig
from cosmos_policy_core.train.samples import (
    EpisodeFrames, SampleBuilder, SampleSpec, TrainingSample, action_chunk_with_padding, load_episode_dir, mix_seed,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "model"


# --- text conditioning without T5 --------------------------------------------------------------------
def task_text_embedding(task: str, length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) fixed pseudo-embedding of a task string, seeded by its hash.

    Stands in for the T5-11B embedding when none is given (a single-task model only needs a
    constant context); pass a real table with `text_embeddings` for multi-task training.
    """
    seed = int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, dim, generator=g) / dim**0.5


def load_text_table(path: str | Path | None, tasks: Sequence[str], length: int, dim: int) -> dict[str, torch.Tensor]:
    """Task -> (1, L, D) embeddings: the given file (reference .pkl or our safetensors), else generated ones."""
    if path is None:
        return {t: task_text_embedding(t, length, dim) for t in sorted(set(tasks))}
    path = Path(path)
    table = read_t5_embeddings(path) if path.suffix == ".pkl" else read_text_embeddings(path)
    missing = sorted(set(tasks) - set(table))
    if missing:
        raise ConfigError(f"{path} lacks embeddings for tasks {missing}; it has {sorted(table)}")
    dims = {e.shape[-1] for e in table.values()}
    if dims != {dim}:
        raise ConfigError(f"{path} has embedding width {sorted(dims)}, the model's crossattn_emb_channels is {dim}")
    return {t: table[t].float() for t in sorted(set(tasks))}


# --- batch assembly --------------------------------------------------------------------------------
def _tensors(images: Mapping[str, object]) -> dict[str, torch.Tensor]:
    # PIL-resized frames are read-only numpy views: copy them into tensors torch may own.
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)) for k, v in images.items()}


class LatentEncoder:
    """Frozen-VAE encode of sample clips: one causal pass per sample per step, optionally cached.

    The cache (in memory, or .npy files in a directory) is keyed by (episode, step) and is only
    valid without augmentation, since the clip of a key is then always the same.
    """

    def __init__(self, vae: WanVAE, layout: LatentLayout, cache: str | None = None, device="cpu"):
        self.vae, self.layout, self.device = vae.eval(), layout, torch.device(device)
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self._memory: dict[tuple, torch.Tensor] | None = {} if cache == "memory" else None
        self._dir = Path(cache) if cache not in (None, "memory") else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        self.encoded = 0
        self.cache_hits = 0

    def _path(self, key: tuple) -> Path:
        name = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
        return self._dir / f"{name}.npy"

    def has(self, key: tuple) -> bool:
        """Whether the latent of `key` is cached (its sample then needs no frames read)."""
        if self._memory is not None:
            return key in self._memory
        return self._dir is not None and bool(key) and self._path(key).exists()

    def _lookup(self, key: tuple) -> torch.Tensor | None:
        if self._memory is not None:
            return self._memory.get(key)
        if self._dir is not None and key and self._path(key).exists():
            return torch.from_numpy(np.load(self._path(key)))
        return None

    def _store(self, key: tuple, latent: torch.Tensor) -> None:
        if self._memory is not None:
            self._memory[key] = latent
        elif self._dir is not None and key:
            tmp = self._path(key).with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, latent.numpy())
            os.replace(tmp, self._path(key))

    @torch.no_grad()
    def encode(self, samples: Sequence[TrainingSample]) -> torch.Tensor:
        """(B, C, T, H, W) clean latents of the samples' pixel clips (before any injection)."""
        cached = [self._lookup(s.key) if s.key else None for s in samples]
        todo = [i for i, c in enumerate(cached) if c is None]
        if todo:
            clips = [build_pixel_clip(self.layout, _tensors(samples[i].current), _tensors(samples[i].future))
                     for i in todo]
            video = clip_to_vae_input(torch.cat(clips).to(self.device), dtype=self.vae.dtype)
            latents = self.vae.encode(video, chunk_frames=None).float().cpu()
            self.encoded += len(todo)
            for j, i in enumerate(todo):
                cached[i] = latents[j]
                if self._memory is not None or self._dir is not None:
                    self._store(samples[i].key, latents[j].clone())
        self.cache_hits += len(samples) - len(todo)
        return torch.stack(cached)


@dataclass
class Batch:
    x0_B_C_T_H_W: torch.Tensor          # latent with proprio, actions, future proprio and value injected
    mask_B_1_T_H_W: torch.Tensor        # conditioning frames of each sample's role
    loss_mask_B_T: torch.Tensor
    crossattn_B_L_D: torch.Tensor
    roles: list[str]


def assemble_batch(layout: LatentLayout, samples: Sequence[TrainingSample], clean_B_C_T_H_W: torch.Tensor,
                   text: Mapping[str, torch.Tensor]) -> Batch:
    """Inject the low-dim targets into the clean latents and stack the per-role masks."""
    x = clean_B_C_T_H_W
    x = inject_proprio(x, torch.from_numpy(np.stack([s.proprio for s in samples])), layout.index("proprio"))
    x = inject_action_chunk(x, torch.from_numpy(np.stack([s.actions for s in samples])), layout.index("action"))
    x = inject_proprio(x, torch.from_numpy(np.stack([s.future_proprio for s in samples])),
                       layout.index("future_proprio"))
    x = inject_value(x, torch.tensor([s.value for s in samples], dtype=torch.float32), layout.index("value"))
    roles = [s.role for s in samples]
    mask = torch.cat([condition_mask(layout, r, 1) for r in roles])
    loss_mask = torch.cat([loss_frame_mask(layout, r, 1) for r in roles])
    try:
        crossattn = torch.cat([text[s.task] for s in samples])
    except KeyError as e:
        raise DataError(f"no text embedding for task {e.args[0]!r}; known: {sorted(text)}") from None
    return Batch(x, mask, loss_mask, crossattn, roles)


# --- distributed context ---------------------------------------------------------------------------
@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistContext(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend, dev = "nccl", torch.device("cuda", local)
    else:
        backend, dev = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("rank %d/%d on %s (%s)", rank, world, dev, backend)
    return DistContext(rank, world, local, dev)


# --- optimizer state as safetensors + JSON (no pickle in run directories) --------------------------------
def _flatten_state(obj, prefix: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        return {"__dict__": [[k, _flatten_state(v, f"{prefix}.{k}" if prefix else str(k), tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    return obj


def _unflatten_state(tree, tensors: Mapping[str, torch.Tensor]):
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__dict__" in tree:
        return {k: _unflatten_state(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, dict) and "__list__" in tree:
        return [_unflatten_state(v, tensors) for v in tree["__list__"]]
    return tree


# --- the trainer ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    history: list[dict]
    eval_history: list[dict]
    final_checkpoint: Path | None


class Trainer:
    """One training run in `run_dir`: `run()` trains to `config.max_steps` (resuming if asked)."""

    def __init__(
        self,
        config: TrainConfig,
        data_dir: str | Path | None,
        run_dir: str | Path,
        *,
        demos: Sequence[EpisodeFrames] | None = None,
        rollouts_dir: str | Path | None = None,
        init: str | Path | None = None,
        vae: str | Path | WanVAE | None = None,
        text_embeddings: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        ctx: DistContext | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.ctx = ctx or init_distributed()
        self.progress = progress and self.ctx.is_main
        self.layout = config.layout_spec()
        self.resume = resume

        # Data: the last `val_episodes` demos are held out for the action-L1 evaluation.
        episodes = list(demos) if demos is not None else load_episode_dir(data_dir)
        successes = [e for e in episodes if e.success]
        if not successes:
            raise DataError(f"{data_dir}: no successful demonstration episode to train the policy on")
        n_val = min(config.val_episodes, max(0, len(successes) - 1))
        self.train_demos, self.val_demos = successes[: len(successes) - n_val], successes[len(successes) - n_val:]
        rollouts = load_episode_dir(rollouts_dir) if rollouts_dir is not None else []
        self.stats = self._stats(data_dir, self.train_demos + self.val_demos, init)
        self.samples = SampleBuilder(self.layout, self.stats, self.train_demos, rollouts, config.samples, config.seed)
        tasks = [e.task for e in episodes + rollouts]
        self.text = load_text_table(text_embeddings, tasks, config.text_length, config.model.crossattn_emb_channels)
        self.data_recipe = {
            "data_dir": None if data_dir is None else str(data_dir),
            "rollouts_dir": None if rollouts_dir is None else str(rollouts_dir),
            "train_episodes": len(self.train_demos), "val_episodes": len(self.val_demos),
            "rollout_episodes": len(rollouts), "epoch": self.samples.structure.__dict__,
            "role_shares": self.samples.role_counts(),
        }

        if self.ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 master weights, TF32 matmuls (Ampere and later)
            torch.backends.cudnn.allow_tf32 = True
        # Networks: the DiT (trained), the VAE (frozen).
        self.vae, self.vae_source = self._load_vae(vae)
        self.encoder = LatentEncoder(self.vae, self.layout, config.latent_cache, self.ctx.device)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        net = CosmosDiT(config.model)
        self.init_report = self._load_init(net, init)
        dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
        self.net = net.to(self.ctx.device, dtype)
        self.model = self._wrap(self.net)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=config.betas,
                                           eps=config.eps, weight_decay=config.weight_decay)
        self.step = 0
        self.history: list[dict] = []
        self.eval_history: list[dict] = []
        if resume:
            self._resume()

    # --- setup helpers ---------------------------------------------------------------------------
    def _stats(self, data_dir, demos: Sequence[EpisodeFrames], init=None) -> DatasetStats:
        """Normalization statistics: the data directory's file, else an --init checkpoint's, else the demos'.

        Fine-tuning one of our checkpoints keeps its normalization when the demos fit in it: statistics
        recomputed over other demos move every normalized target (40 regenerated demos moved the min/max
        by up to 0.14 rad), which the model must first unlearn. Demos outside it (by more than 5 % of a
        dimension's range) get their own statistics instead, with a warning: targets beyond [-1, 1] are
        actions the policy clips away at inference.
        """
        for name in ("stats.json", "dataset_statistics.json"):
            if data_dir is not None and (Path(data_dir) / name).is_file():
                log.info("dataset statistics from %s", Path(data_dir) / name)
                return read_dataset_stats(Path(data_dir) / name, self.layout)
        computed = DatasetStats.from_arrays(np.concatenate([e.action for e in demos]),
                                            np.concatenate([e.qpos for e in demos]))
        if init is not None and (Path(init) / STATS_FILE).is_file():
            kept = read_dataset_stats(Path(init) / STATS_FILE, self.layout)
            outside = {}
            for name in ("actions", "proprio"):
                lo, hi = getattr(kept, f"{name}_min"), getattr(kept, f"{name}_max")
                margin = 0.05 * np.maximum(hi - lo, 1e-6)
                dims = np.flatnonzero((getattr(computed, f"{name}_min") < lo - margin)
                                      | (getattr(computed, f"{name}_max") > hi + margin))
                if dims.size:
                    outside[name] = dims.tolist()
            if not outside:
                log.info("dataset statistics of the --init checkpoint %s (the demos fit in them)", init)
                return kept
            log.warning("the demos exceed the --init checkpoint's statistics (dimensions %s): normalizing with "
                        "statistics over these %d demos instead; the model re-learns the mapping", outside,
                        len(demos))
            return computed
        log.info("no stats.json in the data directory: computing statistics over %d demos", len(demos))
        return computed

    def _load_vae(self, vae) -> tuple[WanVAE, str]:
        from cosmos_policy_core.train.vae import load_vae

        if isinstance(vae, WanVAE):
            return vae.to(self.ctx.device), "given"
        if vae is not None:
            loaded = load_vae(vae)
            if loaded.config.z_dim != self.layout.latent_channels:
                raise ConfigError(f"VAE {vae} has {loaded.config.z_dim} latent channels, the layout needs "
                                  f"{self.layout.latent_channels}")
            return loaded.to(self.ctx.device), str(vae)
        log.warning("no --vae given: using a randomly initialised VAE (%s); train one with "
                    "`cosmos-aloha train-vae` or pass the Wan2.1 tokenizer.pth", self.config.vae)
        torch.manual_seed(self.config.seed + 17)
        return WanVAE(self.config.vae).to(self.ctx.device), "random-init"

    def _load_init(self, net: CosmosDiT, init) -> dict:
        if init is None:
            return {"source": None, "tensors_loaded": 0}
        init = Path(init)
        if init.is_dir():
            state = load_checkpoint_dir(init, load_vae=False).model_state
        else:
            # The reference silently skips a .pt load_path (its §0.8 defect); here it must load or fail.
            state = read_reference_state_dict(init, use_ema=False)
        load_into(net, state, source=str(init))
        log.info("initialised the DiT from %s: %d tensors loaded", init, len(state))
        return {"source": str(init), "tensors_loaded": len(state)}

    def _wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        if not self.ctx.distributed:
            return net
        if self.config.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp import MixedPrecision
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            from cosmos_policy_core.nn.dit import Block

            mp = None
            if self.config.dtype == "bfloat16":
                mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    buffer_dtype=torch.bfloat16)
            # Parameters are held in fp32 by FSDP (the reference's fp32 master weights) when mixed precision is on.
            net = net.float() if mp is not None else net
            return FSDP(net, auto_wrap_policy=ModuleWrapPolicy({Block}), mixed_precision=mp,
                        device_id=self.ctx.device if self.ctx.device.type == "cuda" else None,
                        use_orig_params=True)
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.ctx.local_rank] if self.ctx.device.type == "cuda" else None
        return DDP(net, device_ids=ids)

    # --- state dicts (DDP / FSDP aware) ------------------------------------------------------------
    def _full_model_state(self) -> dict[str, torch.Tensor]:
        if self.ctx.distributed and self.config.fsdp:
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                      FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
                return self.model.state_dict()
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def _full_optimizer_state(self) -> dict:
        if self.ctx.distributed and self.config.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            return FSDP.optim_state_dict(self.model, self.optimizer)
        return self.optimizer.state_dict()

    def _load_optimizer_state(self, state: dict) -> None:
        if self.ctx.distributed and self.config.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            state = FSDP.optim_state_dict_to_load(self.model, self.optimizer, state)
        self.optimizer.load_state_dict(state)

    # --- checkpoints ---------------------------------------------------------------------------------
    def checkpoint(self, model_state: Mapping[str, torch.Tensor]) -> CosmosCheckpoint:
        vae_state = {k: v.detach().cpu() for k, v in self.vae.state_dict().items()}
        metadata = {
            "trained_by": "cosmos-aloha train", "step": self.step, "train_config": self.config.to_dict(),
            "data": self.data_recipe, "vae_source": self.vae_source, "init": self.init_report,
            "world_size": self.ctx.world_size,
        }
        if self.eval_history:
            metadata["eval"] = self.eval_history[-1]
        return CosmosCheckpoint(
            model_config=self.config.model, layout=self.layout, model_state=dict(model_state), stats=self.stats,
            text_embeddings=self.text, vae_config=self.vae.config, vae_state=vae_state,
            diffusion=self.config.diffusion, metadata=metadata,
        )

    def save(self) -> Path | None:
        """Checkpoint directory + trainer state (optimizer, step, metrics); rank 0 writes, all ranks join."""
        model_state = self._full_model_state()
        opt_state = self._full_optimizer_state()
        path = self.run_dir / CHECKPOINT_DIR / f"step_{self.step:08d}"
        if self.ctx.is_main:
            from safetensors.torch import save_file

            save_checkpoint_dir(path, self.checkpoint(model_state))
            tensors: dict[str, torch.Tensor] = {}
            tree = _flatten_state(opt_state, "", tensors)
            save_file(tensors, str(path / OPTIMIZER_STATE))
            # Written last: a checkpoint without it is incomplete and never resumed from.
            (path / TRAINER_STATE).write_text(json.dumps({
                "step": self.step, "optimizer": tree, "world_size": self.ctx.world_size,
                "history": self.history, "eval_history": self.eval_history,
                "lr_factor": self.config.schedule.factor(max(0, self.step - 1)),
            }))
            self._prune()
            log.info("checkpoint %s", path)
        if self.ctx.distributed:
            dist.barrier()
        return path if self.ctx.is_main else None

    def _prune(self) -> None:
        done = sorted(self._complete_checkpoints())
        for old in done[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _complete_checkpoints(self) -> list[Path]:
        root = self.run_dir / CHECKPOINT_DIR
        if not root.is_dir():
            return []
        return sorted(p for p in root.glob("step_*") if (p / TRAINER_STATE).is_file())

    def _resume(self) -> None:
        from safetensors.torch import load_file

        done = self._complete_checkpoints()
        if not done:
            log.info("no checkpoint in %s: starting from step 0", self.run_dir)
            return
        path = done[-1]
        ckpt = load_checkpoint_dir(path, load_vae=False)
        state = json.loads((path / TRAINER_STATE).read_text())
        load_into(self.net, ckpt.model_state, source=str(path))
        if self.ctx.distributed and self.config.fsdp:
            raise ConfigError("resuming an FSDP run loads full weights before sharding; restart it with the "
                              f"checkpoint as --init {path} (the optimizer state restarts)")
        opt = _unflatten_state(state["optimizer"], load_file(str(path / OPTIMIZER_STATE)))
        self._load_optimizer_state(opt)
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.eval_history = list(state.get("eval_history", []))
        log.info("resumed from %s at step %d", path, self.step)

    # --- one step ----------------------------------------------------------------------------------
    def batch_specs(self, step: int) -> list[SampleSpec]:
        """This rank's samples of `step`: stream positions step·B·W + rank·B + b."""
        B, W = self.config.batch_size, self.ctx.world_size
        base = step * B * W + self.ctx.rank * B
        return [self.samples.spec_at(base + b) for b in range(B)]

    def make_batch(self, step: int) -> Batch:
        specs = self.batch_specs(step)
        if self.config.augment is None:
            # A cached latent needs no frames: reading them was most of a GPU step's host time.
            samples = [self.samples.build(s, images=not self.encoder.has(self.samples.key(s))) for s in specs]
        else:
            samples = [self.samples.build(s) for s in specs]
        if self.config.augment is not None:
            g = torch.Generator().manual_seed(mix_seed(self.config.seed, step, self.ctx.rank, 2))
            augmented = []
            for s in samples:
                cur, fut, _ = augment_sample_images(s.current, s.future, g, self.config.augment)
                augmented.append(replace(s, current=cur, future=fut, key=()))
            samples = augmented
        clean = self.encoder.encode(samples)
        return assemble_batch(self.layout, samples, clean, self.text)

    def loss_mask(self, batch: Batch) -> torch.Tensor:
        """(B, T) per-frame loss weights: the role's mask, the action frame × `action_loss_weight`."""
        mask_B_T = batch.loss_mask_B_T
        if self.config.action_loss_weight != 1.0:
            mask_B_T = mask_B_T.clone()
            mask_B_T[:, self.layout.index("action")] *= self.config.action_loss_weight
        return mask_B_T

    def train_step(self, step: int) -> dict:
        cfg = self.config
        batch = self.make_batch(step)
        dev = self.ctx.device
        # Noise depends only on (seed, step, rank): a resumed run draws exactly what it would have.
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, step, self.ctx.rank, 3))
        B = batch.x0_B_C_T_H_W.shape[0]
        sigma_B = sample_training_sigma(B, self.layout.num_latent_frames, g, cfg.diffusion)
        eps = torch.randn(batch.x0_B_C_T_H_W.shape, generator=g)
        lr = cfg.lr * cfg.schedule.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        terms = diffusion_loss(
            self.model, batch.x0_B_C_T_H_W.to(dev), batch.mask_B_1_T_H_W.to(dev), batch.crossattn_B_L_D.to(dev),
            sigma_B.to(dev), eps.to(dev), self.loss_mask(batch).to(dev), config=cfg.diffusion,
            net_dtype=torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32,
        )
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if self.ctx.distributed and cfg.fsdp:
            grad_norm = self.model.clip_grad_norm_(cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        # Per-role loss (same scale as the total: loss_scale × mean over that role's elements).
        per_sample = terms.per_frame_B_T.detach().mean(dim=1) * cfg.diffusion.loss_scale
        stats = torch.stack([terms.loss.detach(), grad_norm.detach().float()]).cpu()
        if self.ctx.distributed:
            dist.all_reduce(stats)
            stats /= self.ctx.world_size
        row = {"step": step + 1, "loss": float(stats[0]), "grad_norm": float(stats[1]), "lr": lr}
        for role in sorted(set(batch.roles)):
            idx = [i for i, r in enumerate(batch.roles) if r == role]
            row[f"loss_{role}"] = float(per_sample[idx].mean())
        return row

    # --- evaluation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Action L1 of policy samples on held-out demos (normalized units and robot units), rank 0."""
        episodes = self.val_demos or self.train_demos
        if not episodes:
            return None
        cfg, lay = self.config, self.layout
        # Evenly spaced steps of the held-out demos: no first-step emphasis, no rollouts.
        builder = SampleBuilder(lay, self.stats, episodes, (),
                                replace(cfg.samples, treat_demos_as_success_rollouts=False, first_steps_prob=0.0))
        total = builder.structure.demo
        positions = np.linspace(0, total - 1, cfg.eval_samples).round().astype(int)
        specs = [builder.spec_for_slot(int(p), np.random.default_rng(0)) for p in positions]
        samples = [builder.build(s) for s in specs]
        # Inference-time clip: future camera slots hold copies of the current images (placeholders).
        clips = [build_pixel_clip(lay, _tensors(s.current)) for s in samples]
        video = clip_to_vae_input(torch.cat(clips).to(self.ctx.device), dtype=self.vae.dtype)
        clean = self.vae.encode(video, chunk_frames=None).float()
        gt = inject_proprio(clean, torch.from_numpy(np.stack([s.proprio for s in samples])).to(clean),
                            lay.index("proprio"))
        mask = condition_mask(lay, "policy", len(samples), device=clean.device)
        text = torch.cat([self.text[s.task] for s in samples]).to(clean)
        self.net.eval()
        x0_fn = make_x0_fn(self.net, gt, mask, text)
        noise = initial_noise(list(range(len(samples))), lay.latent_shape, cfg.diffusion.sigma_max, device=clean.device)
        latent = sample(x0_fn, noise, cfg.eval_sampling_steps, cfg.diffusion)
        pred = extract_action_chunk(latent, lay.index("action"), lay.chunk_size, lay.action_dim).double().cpu().numpy()
        target = np.stack([s.actions for s in samples]).astype(np.float64)
        l1_norm = float(np.abs(pred - target).mean())
        l1_robot = float(np.abs(self.stats.unnormalize_actions(np.clip(pred, -1, 1))
                                - self.stats.unnormalize_actions(target)).mean())
        mean_chunks = np.stack([self.mean_chunk(s.step) for s in specs])
        return {"step": self.step, "action_l1_normalized": l1_norm, "action_l1_robot": l1_robot,
                "mean_chunk_l1_normalized": float(np.abs(mean_chunks - target).mean()),
                "samples": len(samples), "sampling_steps": cfg.eval_sampling_steps,
                "held_out": bool(self.val_demos)}

    def mean_chunk(self, step: int) -> np.ndarray:
        """The training demos' mean normalized action chunk at `step`: what a policy that ignores its
        observation and knows only the time would play. A policy whose held-out L1 is not clearly below
        this baseline's has not learned to look (e.g. where the object is)."""
        episodes = self.train_demos or self.val_demos
        chunks = [action_chunk_with_padding(ep.action, min(step, len(ep) - 1), self.layout.chunk_size)
                  for ep in episodes]
        return np.mean([self.stats.normalize_actions(c.astype(np.float64)) for c in chunks], axis=0)

    # --- the loop --------------------------------------------------------------------------------------
    def _out_of_time(self, deadline: float | None) -> bool:
        """Whether the wall-clock budget is spent; under torchrun every rank takes rank 0's answer."""
        if deadline is None:
            return False
        flag = torch.tensor([float(time.monotonic() >= deadline)])
        if self.ctx.distributed:
            flag = flag.to(self.ctx.device)
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def run(self, max_steps: int | None = None, time_limit: float | None = None) -> TrainResult:
        """Train to `max_steps` (the config's by default), or until `time_limit` seconds have passed.

        A run stopped by its time limit writes a checkpoint at the step it reached (resumable) and the
        final model, like a run that reached its step count; the LR schedule is not rescaled.
        """
        from tqdm import tqdm

        cfg = self.config
        target = max_steps or cfg.max_steps
        deadline = None if time_limit is None else time.monotonic() + time_limit
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            log.info("epoch %s; role shares %s; %d train / %d held-out demos",
                     self.samples.structure, self.samples.role_counts(), len(self.train_demos), len(self.val_demos))
        bar = tqdm(total=target, initial=self.step, desc="train", disable=not self.progress, unit="step")
        window_start, window_samples = time.perf_counter(), 0
        final = None
        while self.step < target:
            row = self.train_step(self.step)
            self.step += 1
            window_samples += cfg.batch_size * self.ctx.world_size
            elapsed = time.perf_counter() - window_start
            row["samples_per_s"] = window_samples / max(elapsed, 1e-9)
            if self.step % cfg.log_every == 0 or self.step == target:
                self.history.append(row)
                window_start, window_samples = time.perf_counter(), 0
                if self.ctx.is_main:
                    with open(self.run_dir / METRICS_FILE, "a") as f:
                        f.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_s']:.2f}", lr=f"{row['lr']:.2e}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.ctx.is_main:
                self._record_eval()
            stop = self.step < target and self._out_of_time(deadline)
            if stop and self.ctx.is_main:
                log.info("time limit of %.0f s reached at step %d of %d: saving and stopping", time_limit,
                         self.step, target)
            if self.step % cfg.checkpoint_every == 0 or self.step == target or stop:
                last = self.step == target or stop
                if last and self.ctx.is_main and (not cfg.eval_every or self.step % cfg.eval_every):
                    self._record_eval()
                self.save()
            if stop:
                break
        bar.close()
        if self.ctx.is_main:
            final = self.run_dir / FINAL_DIR
            save_checkpoint_dir(final, self.checkpoint(self._full_model_state()))
            self.plot()
        elif self.ctx.distributed and cfg.fsdp:
            self._full_model_state()  # FSDP gathers collectively: every rank must take part
        if self.ctx.distributed:
            dist.barrier()
        return TrainResult(self.run_dir, self.step, self.history, self.eval_history, final)

    def _record_eval(self) -> None:
        result = self.evaluate()
        if result is not None:
            self.eval_history.append(result)
            log.info("step %d: held-out action L1 %.4f (normalized), %.4f (robot units); the demos' mean "
                     "chunk scores %.4f", self.step, result["action_l1_normalized"], result["action_l1_robot"],
                     result["mean_chunk_l1_normalized"])

    def plot(self) -> Path | None:
        """loss.png: total and per-role loss, LR, and held-out action L1."""
        if not self.history:
            return None
        return plot_history(self.history, self.eval_history, self.run_dir / "loss.png")


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


__all__ = [
    "task_text_embedding", "load_text_table", "LatentEncoder", "Batch", "assemble_batch", "DistContext",
    "init_distributed", "TrainResult", "Trainer", "plot_history",
]
