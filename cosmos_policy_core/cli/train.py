"""`cosmos-aloha train` (single-stage policy + world model + value) and `cosmos-aloha train-vae` (the VAE fallback).

`train` runs as one process or under `torchrun --nproc_per_node N` (DDP; FSDP with the 2b preset).
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from cosmos_policy_core.errors import ConfigError


def _train(args) -> int:
    from cosmos_policy_core.train.checkpoints import RunCheckpoints
    from cosmos_policy_core.train.config import TrainConfig
    from cosmos_policy_core.train.loop import Trainer, init_distributed

    if args.config == "planning":
        _planning_defaults(args)
        config = TrainConfig.for_planning(args.init, args.steps)
    else:
        config = TrainConfig.load(args.config)
    changes = {}
    if args.steps is not None:
        changes["max_steps"] = args.steps
    if args.batch is not None:
        changes["batch_size"] = args.batch
    if args.checkpoint_every is not None:
        changes["checkpoint_every"] = args.checkpoint_every
    if args.seed is not None:
        changes["seed"] = args.seed
    if changes:
        config = replace(config, **changes)
    ctx = init_distributed()
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    out = Path(args.out)
    if not args.resume and RunCheckpoints(out, config.keep_checkpoints).complete():
        raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    data = [_training_data(d, ctx) for d in args.data]
    trainer = Trainer(config, data, out, rollouts_dir=args.rollouts, init=args.init, vae=args.vae,
                      text_embeddings=args.text_embeddings, resume=args.resume, progress=not args.no_progress,
                      ctx=ctx)
    if trainer.init_report["source"] and ctx.is_main:
        print(f"init: loaded {trainer.init_report['tensors_loaded']} tensors from {trainer.init_report['source']}")
    if args.resume and ctx.is_main:
        print(f"resumed from {trainer.resumed_from} at step {trainer.step}" if trainer.resumed_from
              else f"no complete checkpoint in {trainer.checkpoints.root}: starting at step 0")
    result = trainer.run(time_limit=args.time_limit)
    if ctx.is_main:
        last = result.history[-1] if result.history else {}
        summary = {"steps": result.steps, "final_loss": last.get("loss"), "checkpoint": str(result.final_checkpoint),
                   "eval": result.eval_history[-1] if result.eval_history else None}
        print(json.dumps(summary, indent=2))
    if ctx.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _planning_defaults(args) -> None:
    """`--config planning` fine-tunes the policy of --init into the planner's world model + value: it must keep
    the policy's VAE and task embeddings (the planner feeds it the policy's latents), so they default to
    --init's."""
    from cosmos_policy_core.checkpoint import TEXT_FILE, VAE_FILE

    if not args.init:
        raise ConfigError("--config planning fine-tunes a policy checkpoint: pass it as --init DIR (and the policy's "
                          "rollouts as --rollouts DIR)")
    init = Path(args.init)
    if not args.rollouts:
        raise ConfigError("--config planning learns the world model and value from the policy's rollouts: pass "
                          "--rollouts DIR (record them with `cosmos-aloha sim eval --record-rollouts DIR`)")
    if args.vae is None and (init / VAE_FILE).is_file():
        args.vae = str(init)
    if args.text_embeddings is None and (init / TEXT_FILE).is_file():
        args.text_embeddings = str(init / TEXT_FILE)


def _training_data(data: str, ctx) -> str:
    """A LeRobot dataset directory trains from its 25 Hz episodes, converted once into a cache (rank 0 converts,
    the other ranks wait); any other directory is used as it is."""
    from cosmos_policy_core.data.lerobot import cached_episodes, is_lerobot_dataset

    if not is_lerobot_dataset(data):
        return data
    if ctx.is_main:
        cache = cached_episodes(data)
        print(f"training on {cache}: the LeRobot dataset {data} as 25 Hz episodes")
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()
    return str(cache if ctx.is_main else cached_episodes(data, convert=False))


def _train_vae(args) -> int:
    from cosmos_policy_core.nn.wan_vae import VAEConfig
    from cosmos_policy_core.train.vae import VAETrainConfig, train_vae

    presets = {"tiny": VAEConfig.tiny(), "small": VAEConfig(dim=8, num_res_blocks=1),
               "wan21": VAEConfig.wan21()}
    if args.config not in presets:
        raise ConfigError(f"unknown VAE preset {args.config!r}; choose one of {sorted(presets)}")
    cfg = VAETrainConfig(vae=presets[args.config], steps=args.steps, batch_size=args.batch,
                         image_size=args.image_size, clip_frames=args.clip_frames, lr=args.lr, seed=args.seed,
                         clip_mode=args.clip_mode, foreground_weight=args.foreground_weight,
                         foreground_bucket=args.foreground_bucket, object_scenes=args.object_scenes,
                         object_task=args.object_task, object_fraction=args.object_fraction,
                         object_weight=args.object_weight)
    result = train_vae(args.data, args.out, cfg, progress=not args.no_progress, device=args.device,
                       time_limit=args.time_limit, init=args.init)
    last = result["history"][-1]
    print(f"VAE saved to {args.out}: reconstruction L1 {last['l1']:.4f}, PSNR {result['psnr_db']:.2f} dB; "
          f"use it with `cosmos-aloha train --vae {args.out}`")
    if result["object_recall"] is not None:
        recall = ", ".join(f"{cam} {'-' if r is None else format(r, '.2f')}"
                           for cam, r in result["object_recall"].items())
        print(f"object recall on held-out reset scenes (1: the object comes back, 0: the mean image): {recall}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train policy + world model + value (single stage), one process or under torchrun",
        description="Single-stage Cosmos Policy training: 50% policy / 25% world-model / 25% value samples "
                    "(demos as success rollouts), the reference's loss, optimizer and two-cycle LR schedule.",
    )
    p.add_argument("--data", required=True, nargs="+", metavar="DIR",
                   help="directory of ALOHA HDF5 demo episodes (+ optional stats.json), or a LeRobot dataset "
                        "directory (converted once into a cache, see docs/recording.md); several directories "
                        "train on all their episodes together (a stats.json in them is then not used)")
    p.add_argument("--config", required=True,
                   help="preset tiny | small | 2b, or a JSON file (TrainConfig.to_dict); planning: the planning "
                        "fine-tune of the --init checkpoint's own config (world model + V(s') value on --rollouts, "
                        "10%% demos; its VAE and task embeddings unless given)")
    p.add_argument("--out", default="runs/train", help="run directory (checkpoints, metrics, loss.png, model/)")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides the config)")
    p.add_argument("--batch", type=int, help="samples per process per step (overrides the config)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (overrides the config)")
    p.add_argument("--seed", type=int)
    p.add_argument("--init", help="reference .pt (net. keys, really loaded) or one of our checkpoint directories")
    p.add_argument("--vae", help="train-vae output directory, checkpoint directory, or Wan2.1 tokenizer.pth")
    p.add_argument("--rollouts", help="directory of rollout episodes (attrs success) for world-model/value training")
    p.add_argument("--text-embeddings", help="T5 embeddings: the reference .pkl or our text_embeddings.safetensors")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in --out (a damaged newer one is reported and "
                        "passed over); metrics continue from its step")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this much wall-clock time: checkpoint + final model at the step reached")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log files)")
    p.set_defaults(func=_train)

    v = subparsers.add_parser(
        "train-vae", help="train the small VAE preset on demo images (fallback when tokenizer.pth is unavailable)",
        description="Reconstruction training (L1 + L2 + tiny KL) of a Wan2.1-layout VAE on short clips of the "
                    "demos' camera frames. Real deployments load the released Wan2.1 tokenizer.pth instead.",
    )
    v.add_argument("--data", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--config", default="tiny", help="VAE preset: tiny | small | wan21")
    v.add_argument("--init", help="fine-tune this VAE (train-vae or checkpoint directory) instead of a new one; "
                                  "its architecture replaces --config")
    v.add_argument("--steps", type=int, default=1500)
    v.add_argument("--batch", type=int, default=4)
    v.add_argument("--image-size", type=int, default=224)
    v.add_argument("--clip-frames", type=int, default=5, help="frames per clip, 1 + 4k")
    v.add_argument("--clip-mode", choices=("camera", "layout"), default="camera",
                   help="camera: consecutive frames of one camera; layout: like the policy's clip, groups of 4 "
                        "copies of one image switching camera between groups")
    v.add_argument("--foreground-weight", type=float, default=0.0,
                   help="pixels weigh 1 + this x their distance to the camera's mean image at that point of an "
                        "episode (0: plain mean)")
    v.add_argument("--foreground-bucket", type=int, default=20,
                   help="steps per bucket of the per-step mean images of --foreground-weight")
    v.add_argument("--object-scenes", type=int, default=0,
                   help="render this many reset scenes of --object-task in the sim and train on them too, the "
                        "object's pixels weighted by --object-weight (what keeps a small object; 0: off)")
    v.add_argument("--object-task", default="transfer_cube", help="sim task of --object-scenes")
    v.add_argument("--object-fraction", type=float, default=0.75,
                   help="fraction of every batch drawn from --object-scenes")
    v.add_argument("--object-weight", type=float, default=200.0,
                   help="object-scene pixels weigh 1 + this x their distance to the scenes' mean image")
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--device", help="cuda | cpu (default: cuda when available)")
    v.add_argument("--time-limit", type=float, metavar="SECONDS", help="stop after this much wall-clock time")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=_train_vae)


if __name__ == "__main__":
    # `torchrun --nproc_per_node N -m cosmos_policy_core.cli.train --data ...` (same as `cosmos-aloha train`).
    import sys

    from cosmos_policy_core.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
