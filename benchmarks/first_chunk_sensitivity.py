"""Does the policy's chunk follow the object, and through which input: the cameras or the arm's pose?

For the observations at `--steps` of `--episodes` demos (the object in a different place in each), the
policy's first `--actions` actions of `--joints` (default: right arm joints 0-3) with the same noise,
scored across scenes against the demos' own commands: R² (0 = the blind mean chunk, 1 = perfect) and the
spread (standard deviation across scenes, mean over actions and joints) beside the demos' spread.

Then the same observations with the proprioception of another scene (demo i's images, demo i+1's joint
positions): the R² against the scene that gave the images says how much the cameras drive the chunk, and
against the scene that gave the joints how much the proprioception does. At step 0 the arms are at rest in
every demo, so only the cameras can tell where the object is; a few steps later the arm's pose already
tells where it is heading (docs/training.md, "The reach is read from the arm, not the cameras").

    .venv/bin/python benchmarks/first_chunk_sensitivity.py --checkpoint models/aloha_sim_transfer_cube_small \
        --data demos --steps 0 5 15 --json sensitivity.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation
from cosmos_policy_core.train.samples import load_episode_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks are scripts, not a package
from first_reach_probe import r2_across_scenes  # noqa: E402


def measure(predict: Callable, episodes: Sequence, steps: Sequence[int], actions: int, joints: Sequence[int],
            log: Callable[[str], None] = print) -> list[dict]:
    """One row per step: R² and spread across `episodes` of `predict(images_episode, step, proprio)`, then
    with every episode's images beside the next episode's joint positions (R² against either scene)."""
    sel = (slice(None), slice(0, actions), list(joints))
    rows, start = [], time.perf_counter()
    for step in steps:
        short = [ep.name for ep in episodes if len(ep) < step + actions]
        if short:
            raise ConfigError(f"{short} are shorter than step {step} + {actions} actions")
        target = np.stack([ep.action[step:step + actions] for ep in episodes])[:, :, list(joints)]
        own = np.stack([predict(ep, step, ep.qpos[step]) for ep in episodes])[sel]
        rolled = list(episodes[1:]) + list(episodes[:1])      # demo i's images with demo i+1's joints
        swapped = np.stack([predict(ep, step, other.qpos[step]) for ep, other in zip(episodes, rolled)])[sel]
        row = {"step": step,
               "r2": round(r2_across_scenes(own, target), 3),
               "spread": round(float(own.std(0).mean()), 4),
               "demo_spread": round(float(target.std(0).mean()), 4),
               "r2_swapped_vs_images": round(r2_across_scenes(swapped, target), 3),
               "r2_swapped_vs_proprio": round(r2_across_scenes(swapped, np.roll(target, -1, axis=0)), 3)}
        rows.append(row)
        log(f"step {step:3d}: R² {row['r2']:7.3f}  spread {row['spread']:.4f} (demos {row['demo_spread']:.4f})  "
            f"joints swapped: R² vs the images' scene {row['r2_swapped_vs_images']:7.3f}, "
            f"vs the joints' scene {row['r2_swapped_vs_proprio']:7.3f}  [{time.perf_counter() - start:.0f} s]")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, help="directory of ALOHA HDF5 demos (the object differs per demo)")
    parser.add_argument("--episodes", type=int, default=20, help="demos used, evenly spaced in path order")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 5, 15])
    parser.add_argument("--actions", type=int, default=20)
    parser.add_argument("--joints", type=int, nargs="+", default=[7, 8, 9, 10])
    parser.add_argument("--num-steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--seed", type=int, default=7, help="the one noise seed of every prediction")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    episodes = load_episode_dir(args.data)
    if len(episodes) < 3:
        parser.error(f"{args.data} holds {len(episodes)} demos; R² across scenes needs at least 3")
    picked = [episodes[i] for i in np.linspace(0, len(episodes) - 1, min(args.episodes, len(episodes))).round()
              .astype(int)]
    policy = CosmosPolicy.from_checkpoint(args.checkpoint)   # with the options its training implies
    task = policy.known_tasks[0]

    def predict(ep, step: int, proprio: np.ndarray) -> np.ndarray:
        images = {src: ep.frame(src, step) for src in policy.layout.camera_sources}
        obs = Observation(images=images, proprio=proprio, task=task, timestamp=0.0)
        return np.asarray(policy.act(obs, seed=args.seed, num_steps=args.num_steps).actions)

    try:
        rows = measure(predict, picked, args.steps, args.actions, args.joints, lambda line: print(line, flush=True))
    except ConfigError as e:
        parser.error(str(e))
    report = {"checkpoint": str(args.checkpoint), "episodes": [ep.name for ep in picked],
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
