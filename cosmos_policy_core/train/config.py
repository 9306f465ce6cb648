"""Training configuration (`TrainConfig`) with the tiny, small and 2B presets; JSON round trip.

Defaults are the reference's resolved base-ALOHA values (§4): AdamW 1e-4 (0.9, 0.99) wd 0.1, grad clip 1, two-cycle LR.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from cosmos_policy_core.diffusion import DiffusionConfig
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.layout import LatentLayout
from cosmos_policy_core.nn.config import ModelConfig
from cosmos_policy_core.nn.wan_vae import VAEConfig
from cosmos_policy_core.train.augment import AugmentConfig
from cosmos_policy_core.train.samples import SampleConfig
from cosmos_policy_core.train.schedule import LRSchedule

PRESETS = ("tiny", "small", "2b")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides its data and output paths."""

    model: ModelConfig = field(default_factory=ModelConfig.cosmos_predict2_2b)
    vae: VAEConfig = field(default_factory=VAEConfig.wan21)
    layout: str = "aloha"
    image_size: int = 224
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    schedule: LRSchedule = field(default_factory=LRSchedule.reference)
    batch_size: int = 25                 # per process (reference: 25 per GPU)
    max_steps: int = 50000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 1000               # action L1 on held-out episodes (0: only at the end)
    val_episodes: int = 1                # demo episodes held out from training for that L1
    eval_samples: int = 8                # observations per evaluation
    eval_sampling_steps: int = 3         # denoising steps of the evaluation's policy samples
    text_length: int = 512               # tokens of the generated task embedding (no T5 file given)
    dtype: str = "float32"               # parameter dtype: float32, or bfloat16 (the reference's)
    fsdp: bool = False                   # shard with FSDP under torchrun (the 2B preset)
    latent_cache: str | None = None      # None, "memory" or a directory; only without augmentation
    # Loss weight of the action latent frame (1 = the reference). The action chunk is one of the 11
    # latent frames, so a small model can lower its loss by predicting the images and ignore where
    # the object is; > 1 makes the policy samples pay for that (the shipped sim policy used 3, then 10).
    action_loss_weight: float = 1.0
    # Normalize with the --init checkpoint's statistics even where the demos pass them: a planning fine-tune
    # continues the policy's latents, so it must read proprio and actions exactly as the policy writes them.
    keep_init_stats: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "eval_samples",
                     "eval_sampling_steps", "text_length", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.action_loss_weight > 0:
            raise ConfigError(f"action_loss_weight must be positive, got {self.action_loss_weight}")
        if self.val_episodes < 0 or self.eval_every < 0:
            raise ConfigError("val_episodes and eval_every must be >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.latent_cache is not None and self.augment is not None:
            raise ConfigError("a latent cache needs augmentation off (augmented clips differ every step); "
                              "set augment to null or drop latent_cache")
        self.layout_spec()  # validates image_size against the layout

    def layout_spec(self) -> LatentLayout:
        return replace(LatentLayout.preset(self.layout), image_size=self.image_size)

    # --- presets ---------------------------------------------------------------------------------
    @classmethod
    def cosmos_2b(cls) -> "TrainConfig":
        """The reference run: 2B DiT, Wan2.1 VAE, batch 25 per GPU, bf16, FSDP."""
        return cls(dtype="bfloat16", fsdp=True)

    @classmethod
    def small(cls) -> "TrainConfig":
        """The CPU recipe of the shipped sim policy: 64² images, a 4-block × 128 DiT, the small VAE.

        Augmentation is off so the frozen-VAE latents of every (episode, step) are cached in memory,
        and every 5th step is a sample: on a shared 2-core machine the 41-frame VAE encode, not the
        DiT, is the cost. Use `2b` (or a JSON config) for the reference recipe.
        """
        model = ModelConfig(model_channels=128, num_blocks=4, num_heads=4, adaln_lora_dim=32,
                            crossattn_emb_channels=32)
        return cls(model=model, vae=VAEConfig(dim=8, num_res_blocks=1), image_size=64, batch_size=8,
                   max_steps=1000, lr=3e-4, schedule=LRSchedule.two_cycle(50, 1000, f_end=0.3),
                   samples=SampleConfig(step_stride=5), augment=None, latent_cache="memory",
                   checkpoint_every=100, log_every=5, eval_every=250, text_length=8, eval_samples=8,
                   eval_sampling_steps=5)

    @classmethod
    def tiny(cls) -> "TrainConfig":
        """Tests and smoke runs: the tiny DiT, a 4-wide one-block VAE, 64² images."""
        return cls(model=ModelConfig.tiny(), vae=VAEConfig(dim=4, num_res_blocks=1), image_size=64,
                   batch_size=2, max_steps=20,
                   schedule=LRSchedule.two_cycle(5, 50), checkpoint_every=10, log_every=1, eval_every=0,
                   text_length=8, eval_samples=2, eval_sampling_steps=1)

    def planning(self, steps: int | None = None) -> "TrainConfig":
        """The planning fine-tune of a model trained with this config (reference §4.2, planning model).

        Same network, VAE, images and text; samples as the reference's planning run: 10 % demos (policy
        samples), the rollouts half successes and half failures, each a world-model or a V(s') value sample
        (value_v_s: only s' conditions the value, and only the value frame is trained), normalized with the
        policy's statistics (`keep_init_stats`). `steps` (default:
        this config's) sets the run's length; the LR warms up over its first tenth, as the reference's
        1,500 of 15,000, and decays to 0.3 by its end.
        """
        steps = steps or self.max_steps
        samples = replace(self.samples, demo_prob=0.1, success_prob=0.5, world_model_prob=0.5,
                          treat_demos_as_success_rollouts=False, value_role="value_v_s", first_steps_prob=0.0)
        # A latent-cache directory of the policy run holds demo latents only; rollouts need their own entries.
        cache = None if self.latent_cache is None or self.augment is not None else "memory"
        return replace(self, samples=samples, max_steps=steps,
                       schedule=LRSchedule.two_cycle(max(1, steps // 10), steps), action_loss_weight=1.0,
                       latent_cache=cache, keep_init_stats=True,
                       checkpoint_every=min(self.checkpoint_every, steps), eval_every=min(self.eval_every, steps))

    @classmethod
    def for_planning(cls, policy_checkpoint: str | Path, steps: int | None = None) -> "TrainConfig":
        """`planning()` of the config a checkpoint directory was trained with (its metadata.train_config)."""
        from cosmos_policy_core.checkpoint import CONFIG_FILE

        path = Path(policy_checkpoint) / CONFIG_FILE
        try:
            config = json.loads(path.read_text())
            recorded = config.get("metadata", {}).get("train_config")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"--config planning reads the training config of --init {policy_checkpoint}, but "
                              f"{path} cannot be read ({e})") from e
        if not isinstance(recorded, Mapping):
            raise ConfigError(f"{path} records no training config (metadata.train_config), so the planning "
                              "fine-tune cannot copy its network: write a JSON config (TrainConfig.planning() of the "
                              "policy's config) and pass it as --config")
        # The network's own sections are what the weights fit (a recorded train config may name retired options).
        own = {k: config[k] for k in ("model", "vae", "diffusion") if isinstance(config.get(k), Mapping)}
        recorded = {**recorded, **own}
        try:
            base = cls.from_dict(recorded)
        except ConfigError as e:
            raise ConfigError(f"{path} metadata.train_config: {e}") from e
        return base.planning(steps)

    @classmethod
    def preset(cls, name: str) -> "TrainConfig":
        table = {"tiny": cls.tiny, "small": cls.small, "2b": cls.cosmos_2b}
        if name not in table:
            raise ConfigError(f"unknown training preset {name!r}; choose one of {PRESETS} or a JSON file")
        return table[name]()

    @classmethod
    def load(cls, name_or_path: str) -> "TrainConfig":
        """A preset name or a JSON file written by `to_dict` (missing keys take the defaults)."""
        if name_or_path in PRESETS:
            return cls.preset(name_or_path)
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"--config {name_or_path!r} is neither a preset {PRESETS} nor a JSON file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} holds a {type(data).__name__}, expected a JSON object of TrainConfig fields")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    # --- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items()}
        out["model"] = self.model.to_dict()
        out["vae"] = self.vae.to_dict()
        out["diffusion"] = self.diffusion.to_dict()
        out["schedule"] = self.schedule.to_dict()
        out["augment"] = None if self.augment is None else asdict(self.augment)
        out["samples"] = asdict(self.samples)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"training config has unknown keys {unknown}; known keys are {sorted(known)}")
        values = dict(data)
        for key in ("model", "vae", "diffusion", "schedule", "samples", "augment"):
            if key in values and not isinstance(values[key], Mapping) and not (key == "augment" and values[key] is None):
                raise ConfigError(f'"{key}" holds {json.dumps(values[key])[:60]}, expected a JSON object')
        try:
            if "model" in values:
                values["model"] = ModelConfig.from_dict(values["model"])
            if "vae" in values:
                values["vae"] = VAEConfig.from_dict(values["vae"])
            if "diffusion" in values:
                values["diffusion"] = DiffusionConfig.from_dict(values["diffusion"])
            if "schedule" in values:
                values["schedule"] = LRSchedule.from_dict(values["schedule"])
            if values.get("augment") is not None:
                values["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in values["augment"].items()})
            if "samples" in values:
                values["samples"] = SampleConfig(**values["samples"])
            if "betas" in values:
                values["betas"] = tuple(values["betas"])
            return cls(**values)
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            raise ConfigError(f"training config is invalid: {e}") from e


__all__ = ["TrainConfig", "PRESETS"]
