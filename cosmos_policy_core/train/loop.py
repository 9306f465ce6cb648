"""The single-stage trainer: policy, world-model and value samples in one diffusion loss, single process or torchrun.

Owns the networks (DiT trained, VAE frozen), AdamW + LR schedule, DDP/FSDP and the step loop; composes the run's
data and statistics (train.data), batch assembly (train.batch), checkpoints and metrics on disk
(train.checkpoints) and evaluation and plots (train.evaluation).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from cosmos_policy_core import atomic
from cosmos_policy_core.checkpoint import (
    CosmosCheckpoint, DeploySettings, load_checkpoint_dir, load_into, read_reference_state_dict, save_checkpoint_dir,
)
from cosmos_policy_core.diffusion import diffusion_loss, sample_training_sigma
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.layout import TRAIN_CROP_AREA
from cosmos_policy_core.nn.dit import CosmosDiT
from cosmos_policy_core.nn.wan_vae import WanVAE
from cosmos_policy_core.train.augment import augment_sample_images
from cosmos_policy_core.train.batch import Batch, LatentEncoder, assemble_batch
from cosmos_policy_core.train.checkpoints import METRICS_FILE, MetricsLog, RunCheckpoints
from cosmos_policy_core.train.config import TrainConfig
from cosmos_policy_core.train.data import TrainingData
from cosmos_policy_core.train.evaluation import ActionEvaluator, plot_history
from cosmos_policy_core.train.samples import EpisodeFrames, SampleSpec, mix_seed

log = logging.getLogger(__name__)

FINAL_DIR = "model"


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


# --- the trainer ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    history: list[dict]
    eval_history: list[dict]
    final_checkpoint: Path | None


class Trainer:
    """One training run in `run_dir`: `run()` trains to `config.max_steps` (resuming if asked).

    `resume` continues from the newest intact checkpoint in `run_dir` (`resumed_from` says which; None when
    there is none yet and the run starts at step 0).
    """

    def __init__(
        self,
        config: TrainConfig,
        data_dir: str | Path | Sequence[str | Path] | None,
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
        self.data = TrainingData.load(config, data_dir, demos=demos, rollouts_dir=rollouts_dir, init=init,
                                      text_embeddings=text_embeddings)
        self.checkpoints = RunCheckpoints(self.run_dir, config.keep_checkpoints)
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE)

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
        self.evaluator = ActionEvaluator(self.data, config, self.ctx.device)
        self.step = 0
        self.history: list[dict] = []
        self.eval_history: list[dict] = []
        self.resumed_from: Path | None = None
        if resume:
            self._resume()

    # --- setup helpers ---------------------------------------------------------------------------
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
        self.init_deploy: DeploySettings | None = None
        if init is None:
            return {"source": None, "tensors_loaded": 0}
        init = Path(init)
        if init.is_dir():
            loaded = load_checkpoint_dir(init, load_vae=False)
            state, self.init_deploy = loaded.model_state, loaded.deploy
        else:
            # The reference silently skips a .pt load_path (its §0.8 defect); here it must load or fail.
            state = read_reference_state_dict(init, use_ema=False)
        load_into(net, state, source=str(init))
        log.info("initialised the DiT from %s: %d tensors loaded", init, len(state))
        if self.init_deploy is not None:
            log.info("the model deploys as %s does: %s (its test-time crop from this run's augmentation)", init,
                     self.init_deploy.to_dict())
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
    def checkpoint(self, model_state) -> CosmosCheckpoint:
        vae_state = {k: v.detach().cpu() for k, v in self.vae.state_dict().items()}
        metadata = {
            "trained_by": "cosmos-aloha train", "step": self.step, "train_config": self.config.to_dict(),
            "data": self.data.recipe(), "vae_source": self.vae_source, "init": self.init_report,
            "world_size": self.ctx.world_size,
        }
        if self.eval_history:
            metadata["eval"] = self.eval_history[-1]
        return CosmosCheckpoint(
            model_config=self.config.model, layout=self.layout, model_state=dict(model_state), stats=self.data.stats,
            text_embeddings=self.data.text, vae_config=self.vae.config, vae_state=vae_state,
            diffusion=self.config.diffusion, metadata=metadata, deploy=self.deploy_settings(),
        )

    def deploy_settings(self) -> DeploySettings | None:
        """A fine-tune runs the way its --init checkpoint does (execution, ensembling, denoising steps), with the
        test-time crop of its own training (none without crop augmentation); None without an --init deploy
        section: DeploySettings.from_checkpoint then infers them from the recorded training."""
        if self.init_deploy is None:
            return None
        crop = None if self.config.augment is None else TRAIN_CROP_AREA
        return replace(self.init_deploy, crop_area=crop)

    def save(self) -> Path | None:
        """Checkpoint directory + trainer state (optimizer, step, metrics); rank 0 writes, all ranks join."""
        model_state = self._full_model_state()
        opt_state = self._full_optimizer_state()
        path = None
        if self.ctx.is_main:
            path = self.checkpoints.save(self.step, self.checkpoint(model_state), opt_state, {
                "world_size": self.ctx.world_size, "history": self.history, "eval_history": self.eval_history,
                "lr_factor": self.config.schedule.factor(max(0, self.step - 1)),
            })
        if self.ctx.distributed:
            dist.barrier()
        return path

    def _resume(self) -> None:
        if self.ctx.is_main:
            self.checkpoints.remove_stale()
        if self.ctx.distributed:
            dist.barrier()   # rank 0 cleans up before any rank lists the checkpoints
        restored = self.checkpoints.load_newest()
        if restored is None:
            log.info("no checkpoint in %s: starting from step 0", self.checkpoints.root)
            return
        if self.ctx.distributed and self.config.fsdp:
            raise ConfigError("resuming an FSDP run loads full weights before sharding; restart it with the "
                              f"checkpoint as --init {restored.path} (the optimizer state restarts)")
        saved = restored.checkpoint.stats
        if saved is not None and saved.to_json_dict() != self.data.stats.to_json_dict():
            # The weights learned this normalization: continuing under another would move every target.
            log.warning("the data's statistics (%s) differ from those %s was trained with: keeping the "
                        "checkpoint's", self.data.stats_source, restored.path)
            self.data = self.data.with_stats(saved, str(restored.path))
            self.evaluator = ActionEvaluator(self.data, self.config, self.ctx.device)
        load_into(self.net, restored.checkpoint.model_state, source=str(restored.path))
        self._load_optimizer_state(restored.optimizer)
        self.step = restored.step
        self.history = list(restored.state.get("history", []))
        self.eval_history = list(restored.state.get("eval_history", []))
        self.resumed_from = restored.path
        log.info("resumed from %s at step %d", restored.path, self.step)

    # --- one step ----------------------------------------------------------------------------------
    def batch_specs(self, step: int) -> list[SampleSpec]:
        """This rank's samples of `step`: stream positions step·B·W + rank·B + b."""
        B, W = self.config.batch_size, self.ctx.world_size
        base = step * B * W + self.ctx.rank * B
        return [self.data.samples.spec_at(base + b) for b in range(B)]

    def make_batch(self, step: int) -> Batch:
        specs = self.batch_specs(step)
        if self.config.augment is None:
            # A cached latent needs no frames: reading them was most of a GPU step's host time.
            samples = [self.data.samples.build(s, images=not self.encoder.has(self.data.samples.key(s))) for s in specs]
        else:
            samples = [self.data.samples.build(s) for s in specs]
        if self.config.augment is not None:
            g = torch.Generator().manual_seed(mix_seed(self.config.seed, step, self.ctx.rank, 2))
            augmented = []
            for s in samples:
                cur, fut, _ = augment_sample_images(s.current, s.future, g, self.config.augment)
                augmented.append(replace(s, current=cur, future=fut, key=()))
            samples = augmented
        clean = self.encoder.encode(samples)
        return assemble_batch(self.layout, samples, clean, self.data.text)

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
    def evaluate(self) -> dict | None:
        """Held-out action L1 of the current weights (ActionEvaluator), rank 0."""
        return self.evaluator.evaluate(self.net, self.vae, self.step)

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
            atomic.write_text(self.run_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
            # Rows logged after the checkpoint this run resumed from belong to the run that died: dropped.
            self.metrics.restart(self.history)
            data = self.data
            log.info("epoch %s; role shares %s; %d train / %d held-out demos; statistics: %s",
                     data.samples.structure, data.samples.role_counts(), len(data.train_demos), len(data.val_demos),
                     data.stats_source)
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
                    self.metrics.append(row)
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


__all__ = ["DistContext", "init_distributed", "TrainResult", "Trainer", "FINAL_DIR"]
