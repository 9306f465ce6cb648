"""MuJoCo ALOHA step rate: AlohaSimEnv steps/s with the three cameras at several sizes, and physics only.

Also reports the load average, since on a shared machine software-GL rendering competes for the cores.
    .venv/bin/python benchmarks/sim_step_rate.py --steps 100 --json /tmp/sim_step_rate.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from cosmos_policy_core.sim.env import AlohaSimEnv


def measure(task: str, size: tuple[int, int] | None, control_hz: int, steps: int) -> dict:
    height, width = size or (480, 640)
    with AlohaSimEnv(task, height, width, control_hz=control_hz, render=size is not None) as env:
        action = env.reset(seed=0)["qpos"].copy()
        env.step(action)                                     # first render allocates GL buffers
        start = time.perf_counter()
        for t in range(steps):
            action[0] = 0.2 * np.sin(t / 20)                 # keep the arm (and the contacts) moving
            env.step(action)
        seconds = time.perf_counter() - start
    return {"task": task, "size": None if size is None else list(size), "control_hz": control_hz,
            "steps_per_s": steps / seconds, "ms_per_step": 1000 * seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for size, hz, steps in [((480, 640), 50, args.steps), ((224, 224), 50, args.steps),
                            ((480, 640), 25, args.steps), (None, 50, 10 * args.steps)]:
        row = measure(args.task, size, hz, steps)
        rows.append(row)
        label = "physics only" if size is None else f"3 cams {size[0]}x{size[1]}"
        print(f"{label:>18} @ {hz} Hz control: {row['steps_per_s']:7.1f} steps/s ({row['ms_per_step']:.1f} ms/step)")
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "loadavg": load, "cores": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
