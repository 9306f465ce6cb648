"""`cosmos-aloha act`: one observation (three image files + proprio JSON) through a checkpoint.

Prints the action chunk and value; with --out saves actions.json / actions.npy, result.json and a current-vs-predicted PNG grid.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cosmos_policy_core.engines.resolve import ENGINES, PRECISION_NAMES
from cosmos_policy_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def read_image(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def read_proprio(path: str) -> np.ndarray:
    """A JSON list of joint values, or an object with a 'proprio' / 'qpos' list."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"proprio file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e})") from e
    except IsADirectoryError:
        raise DataError(f"proprio file {path} is a directory") from None
    if isinstance(data, dict):
        for key in ("proprio", "qpos"):
            if key in data:
                data = data[key]
                break
        else:
            raise DataError(f"{path} has no 'proprio' or 'qpos' list (keys: {sorted(data)})")
    try:
        proprio = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: proprio is not a list of numbers ({e})") from e
    if not np.isfinite(proprio).all():
        raise DataError(f"{path}: proprio holds NaN or Infinity at {np.flatnonzero(~np.isfinite(proprio)).tolist()}; "
                        "give 14 joint values in radians (grippers normalised 0..1)")
    return proprio


def image_grid(current: dict[str, np.ndarray], predicted: dict[str, np.ndarray] | None) -> np.ndarray:
    """Top row the current model inputs, bottom row the predicted frames (same camera order)."""
    cams = list(current)
    top = np.concatenate([current[c] for c in cams], axis=1)
    if not predicted:
        return top
    bottom = np.concatenate([predicted[c] for c in cams], axis=1)
    gap = np.full((4, top.shape[1], 3), 255, np.uint8)
    return np.concatenate([top, gap, bottom], axis=0)


def run(args) -> int:
    from PIL import Image

    from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation, policy_config_for

    if len(args.images) != 3:
        raise ConfigError("--images takes three files: top (cam_high), left wrist, right wrist")
    top, left, right = (read_image(p) for p in args.images)
    policy = CosmosPolicy.from_checkpoint(args.checkpoint, engine=args.engine, export_dir=args.export_dir,
                                          device=args.device, dtype=args.dtype,
                                          config=policy_config_for(args.checkpoint, clip_actions=not args.no_clip))
    obs = Observation(images={"cam_high": top, "cam_left_wrist": left, "cam_right_wrist": right},
                      proprio=read_proprio(args.proprio), task=args.task)
    cond = policy.encode_observation(obs)
    chunk = policy.act(cond, seed=args.seed, num_steps=args.steps, return_future_images=not args.no_images)
    chunk.timings.update(cond.timings)
    np.set_printoptions(precision=4, suppress=True, linewidth=160)
    print(f"task: {args.task!r}  seed: {chunk.seed}  steps: {chunk.num_steps}")
    print(f"value: {chunk.value:.4f}")
    print(f"actions ({chunk.actions.shape[0]}x{chunk.actions.shape[1]}), first and last:")
    print(chunk.actions[[0, -1]])
    print("timings [s]: " + ", ".join(f"{k} {v:.3f}" for k, v in chunk.timings.items()))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "actions.npy", chunk.actions)
        (out / "actions.json").write_text(json.dumps(chunk.actions.tolist()))
        result = {"task": args.task, "seed": chunk.seed, "num_steps": chunk.num_steps, "value": chunk.value,
                  "future_proprio": None if chunk.future_proprio is None else chunk.future_proprio.tolist(),
                  "timings": chunk.timings, "checkpoint": str(args.checkpoint)}
        (out / "result.json").write_text(json.dumps(result, indent=2))
        Image.fromarray(image_grid(cond.images, chunk.future_images)).save(out / "frames.png")
        print(f"wrote {out}/actions.json, actions.npy, result.json, frames.png")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("act", help="run one observation through a checkpoint and show the action chunk")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + safetensors)")
    p.add_argument("--images", nargs=3, required=True, metavar=("TOP", "LEFT", "RIGHT"),
                   help="cam_high, cam_left_wrist, cam_right_wrist image files (any size)")
    p.add_argument("--proprio", required=True, help="JSON file: 14 joint values (list, or {'proprio': [...]})")
    p.add_argument("--task", required=True, help="task string; must be one the checkpoint has an embedding for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=10, help="denoising steps (1 = the real-time mode)")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="torch (eager), compile (torch.compile), onnx / tensorrt (the graphs of `cosmos-aloha export`)")
    p.add_argument("--export-dir", default=None,
                   help="export directory for --engine onnx / tensorrt (default: <checkpoint>/export)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("auto", *PRECISION_NAMES), default="auto",
                   help="network precision (auto: bf16 on a GPU, fp32 on a CPU; onnx / tensorrt: as exported)")
    p.add_argument("--no-images", action="store_true", help="skip decoding the predicted frames")
    p.add_argument("--no-clip", action="store_true", help="do not clamp normalized actions to [-1, 1]")
    p.add_argument("--out", default=None, help="directory for actions.json/.npy, result.json and frames.png")
    p.set_defaults(func=run)
