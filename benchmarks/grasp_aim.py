"""Where a transfer-cube policy aims its grasp, and how much aim error each part of the table tolerates.

Aim: every rollout recorded by `cosmos-aloha sim eval --record-rollouts DIR` is replayed in the physics-only sim
from its seed. At the control step where the right gripper command closes, the right fingertip centre (between
the finger pads) is measured against the cube; the same is measured for the scripted demo of that scene, the
motion the policy was taught. The difference is the policy's aim error, reported by the cube's starting y.

Tolerance (`--tolerance N`): the scripted demos of scenes SEED .. SEED + N - 1 with the cube believed 1 and 2 cm
off in y (`run_scripted_demo`'s plan_error): how many still lift the cube, and how many still succeed, by the
same bins of y.

Probe (`--probe N --checkpoint DIR`): how precisely the checkpoint's VAE latent of the top view locates the cube.
N reset scenes are rendered and resized as the policy resizes them; ridge regressions from the latent to the
cube's (x, y), fitted on the first 40, 100, 200 or three quarters of them, are scored on the last quarter: their
RMSE, and their mean y error by the cube's y (does it follow the position, as the policy's aim does?).

    MUJOCO_GL=egl python benchmarks/grasp_aim.py --rollouts r43000 r43150 --tolerance 200 --seed 41000 \
        --probe 800 --checkpoint models/aloha_sim_transfer_cube_small --out grasp_aim.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from cosmos_policy_core.data.episode import load_episode_dir
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.sim.demos import DemoGenerator
from cosmos_policy_core.sim.ee_env import GRIPPER_BODIES
from cosmos_policy_core.sim.env import AlohaSimEnv
from cosmos_policy_core.sim.scripted import tcp_from_link
from cosmos_policy_core.sim.tasks import MAX_REWARD, get_task

TASK = "transfer_cube"
RIGHT_GRIPPER = aloha.GRIPPER_INDICES[1]   # the right gripper's entry in a 14-d action
Y_OFFSETS = (-0.02, -0.01, 0.01, 0.02)
TOLERANCE_KEYS = ("0", *(f"{dy:+.2f}" for dy in Y_OFFSETS))   # "0": the script aimed at the cube itself
LIFTED = 2                  # transfer-cube reward 2: the right gripper holds the cube off the table
PROBE_SEED = 90000          # reset scenes of the probe: apart from the seeds of evaluations and demos
RIDGE = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def closing_step(actions: np.ndarray) -> int | None:
    """The first control step at which the right gripper command closes after having opened."""
    grip = actions[:, RIGHT_GRIPPER]
    opened = np.flatnonzero(grip > 0.5)
    if len(opened) == 0:
        return None
    closed = np.flatnonzero(grip[opened[0]:] < 0.5)
    return None if len(closed) == 0 else int(opened[0] + closed[0])


def fingertips_at_close(env: AlohaSimEnv, seed: int, actions: np.ndarray) -> dict:
    """Replay `actions` from scene `seed`: the cube's start, and the right fingertip centre minus the cube's
    position at the closing step (None where the gripper never closes)."""
    body = int(env.model.body(GRIPPER_BODIES[1]).id)
    env.reset(seed=seed)
    start = env.object_state()[0, :3].copy()
    close = closing_step(actions)
    offset = None
    for k, action in enumerate(actions):
        if k == close:
            tip = tcp_from_link(env.data.xpos[body].copy(), env.data.xquat[body].copy())
            offset = (tip - env.object_state()[0, :3]).tolist()
        env.step(action, render=False)
    return {"cube": start.tolist(), "close_step": close, "offset": offset, "success": bool(env.success)}


def by_cube_y(cube_y: np.ndarray, bins: int) -> list[tuple[str, np.ndarray]]:
    """(label, indices) of the nonempty bins of the task's range of cube y, `bins` of equal width."""
    low, high = get_task(TASK).ranges[0][1]
    edges = np.linspace(low, high, bins + 1)
    which = np.clip(np.searchsorted(edges, cube_y, side="right") - 1, 0, bins - 1)
    return [(f"{edges[b]:.2f}-{edges[b + 1]:.2f}", np.flatnonzero(which == b)) for b in range(bins)
            if (which == b).any()]


def aim(rollout_dirs: list[str], generator: DemoGenerator) -> list[dict]:
    rows = []
    for directory in rollout_dirs:
        for episode in load_episode_dir(directory):
            seed = int(episode.attrs["seed"])
            script_actions = generator.generate(seed).episode.action
            policy = fingertips_at_close(generator.env, seed, episode.action.astype(np.float64))
            script = fingertips_at_close(generator.env, seed, script_actions)
            error = (None if policy["offset"] is None or script["offset"] is None
                     else np.subtract(policy["offset"], script["offset"]).tolist())
            rows.append({"seed": seed, "success": episode.success, "cube": policy["cube"],
                         "replayed_success": policy["success"], "close_step": policy["close_step"],
                         "script_close_step": script["close_step"], "aim_error": error})
    return rows


def aim_table(rows: list[dict]) -> list[dict]:
    rows = [r for r in rows if r["aim_error"] is not None]
    table = []
    for label, members in by_cube_y(np.array([r["cube"][1] for r in rows]), 10):
        group = [rows[i] for i in members]
        err = np.array([r["aim_error"] for r in group]) * 100
        table.append({"cube_y": label, "episodes": len(group), "successes": sum(r["success"] for r in group),
                      "y_error_cm": [round(float(err[:, 1].mean()), 2), round(float(err[:, 1].std()), 2)],
                      "x_error_cm": [round(float(err[:, 0].mean()), 2), round(float(err[:, 0].std()), 2)]})
    return table


def tolerance(seed: int, scenes: int, generator: DemoGenerator) -> tuple[list[dict], list[dict]]:
    rows = []
    for s in range(seed, seed + scenes):
        rewards = {key: generator.generate(s, plan_error=[[0.0, dy, 0.0]]).max_reward
                   for key, dy in zip(TOLERANCE_KEYS, (0.0, *Y_OFFSETS))}
        rows.append({"seed": s, "cube": generator.ee_env.object_poses[0, :3].tolist(), "max_reward": rewards})
    table = []
    for label, members in by_cube_y(np.array([r["cube"][1] for r in rows]), 10):
        line = {"cube_y": label, "scenes": len(members)}
        for key in TOLERANCE_KEYS:
            rewards = [rows[i]["max_reward"][key] for i in members]
            line[key] = {"lifted": sum(m >= LIFTED for m in rewards),
                         "succeeded": sum(m == MAX_REWARD for m in rewards)}
        table.append(line)
    return rows, table


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    x1 = np.c_[x, np.ones(len(x))]
    return np.linalg.solve(x1.T @ x1 + ridge * np.eye(x1.shape[1]), x1.T @ y)


def ridge_predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.c_[x, np.ones(len(x))] @ w


def rmse_cm(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.sqrt(((pred - truth) ** 2).mean(axis=0)) * 100


def latent_probe(checkpoint: str, scenes: int) -> list[dict]:
    """Ridge probes of the cube's (x, y) from the VAE latent of the top view; the ridge is chosen on the last fifth
    of each training set, then refitted on all of it."""
    import torch

    from cosmos_policy_core.checkpoint import load_checkpoint_dir
    from cosmos_policy_core.runtime.images import client_resize
    from cosmos_policy_core.sim.env import render_reset_scenes
    from cosmos_policy_core.train.vae import load_vae

    size = load_checkpoint_dir(checkpoint, load_vae=False).layout.image_size
    tops = [scene["cam_high"] for scene in render_reset_scenes(TASK, scenes, PROBE_SEED)]
    cube = np.stack([get_task(TASK).sample_object_poses(PROBE_SEED + i)[0, :2] for i in range(scenes)])
    pixels = np.stack([client_resize(top, size) for top in tops]).astype(np.float32) / 127.5 - 1
    vae = load_vae(checkpoint).eval()
    with torch.no_grad():
        video = torch.from_numpy(pixels).permute(0, 3, 1, 2)[:, :, None]       # (N, 3, 1, S, S)
        latent = torch.cat([vae.encode(video[i:i + 64]) for i in range(0, scenes, 64)]).flatten(1).numpy()
    test = slice(scenes * 3 // 4, scenes)
    rows = []
    for n in sorted({40, 100, 200, scenes * 3 // 4}):
        if n > scenes * 3 // 4:
            continue
        fit, val = slice(0, n * 4 // 5), slice(n * 4 // 5, n)
        best = min(RIDGE, key=lambda r: rmse_cm(ridge_predict(ridge_fit(latent[fit], cube[fit], r), latent[val]),
                                                cube[val]).sum())
        pred = ridge_predict(ridge_fit(latent[:n], cube[:n], best), latent[test])
        err = rmse_cm(pred, cube[test])
        # Its mean y error in five bins of the cube's y: a bias that follows the position, like the policy's?
        y_error = (pred - cube[test])[:, 1] * 100
        bias = {label: round(float(y_error[members].mean()), 2) for label, members in by_cube_y(cube[test][:, 1], 5)}
        rows.append({"training_scenes": n, "test_scenes": scenes - scenes * 3 // 4, "ridge": best,
                     "rmse_x_cm": round(float(err[0]), 2), "rmse_y_cm": round(float(err[1]), 2),
                     "mean_y_error_cm_by_cube_y": bias})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", nargs="*", default=[], metavar="DIR",
                        help="transfer-cube rollouts recorded by `sim eval --record-rollouts`")
    parser.add_argument("--tolerance", type=int, default=0, metavar="N",
                        help="scripted scenes to misjudge by 1 and 2 cm in y (0: none)")
    parser.add_argument("--seed", type=int, default=41000, help="first scene of --tolerance")
    parser.add_argument("--probe", type=int, default=0, metavar="N",
                        help="reset scenes for the latent probe of the cube's position (0: none; at least 60)")
    parser.add_argument("--checkpoint", help="the policy checkpoint whose VAE --probe reads")
    parser.add_argument("--out", default="grasp_aim.json")
    args = parser.parse_args()
    if not args.rollouts and not args.tolerance and not args.probe:
        parser.error("give --rollouts DIR ..., --tolerance N and/or --probe N")
    if args.probe and (args.probe < 60 or not args.checkpoint):
        parser.error("--probe needs at least 60 scenes and --checkpoint DIR")

    report = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()})"}
    # The scripted demos, and its sim replays the rollouts; the probe needs neither.
    generator = DemoGenerator(TASK, render=False) if args.rollouts or args.tolerance else None
    if args.rollouts:
        t0 = time.perf_counter()
        rows = aim(args.rollouts, generator)
        report["aim"] = {"episodes": rows, "by_cube_y": aim_table(rows), "seconds": round(time.perf_counter() - t0)}
        agree = sum(r["replayed_success"] == r["success"] for r in rows)
        print(f"aim of {len(rows)} rollouts (replays agreeing on success: {agree}); error = policy - script, "
              "mean ± sd, cm")
        print(f"{'cube y (m)':>11} {'episodes':>8} {'successes':>9} {'y error':>14} {'x error':>14}")
        for line in report["aim"]["by_cube_y"]:
            print(f"{line['cube_y']:>11} {line['episodes']:>8} {line['successes']:>9} "
                  f"{line['y_error_cm'][0]:+7.2f} ± {line['y_error_cm'][1]:4.2f} "
                  f"{line['x_error_cm'][0]:+7.2f} ± {line['x_error_cm'][1]:4.2f}")
    if args.tolerance:
        t0 = time.perf_counter()
        rows, table = tolerance(args.seed, args.tolerance, generator)
        report["tolerance"] = {"scenes": rows, "by_cube_y": table, "seconds": round(time.perf_counter() - t0)}
        print(f"scripted demos with the cube believed off in y (m): lifted / succeeded, of {args.tolerance} scenes "
              f"from seed {args.seed}")
        print(f"{'cube y (m)':>11} {'scenes':>6} " + " ".join(f"{k:>9}" for k in TOLERANCE_KEYS))
        for line in table:
            cells = " ".join(f"{line[k]['lifted']:>4}/{line[k]['succeeded']:<4}" for k in TOLERANCE_KEYS)
            print(f"{line['cube_y']:>11} {line['scenes']:>6} {cells}")
    if args.probe:
        t0 = time.perf_counter()
        rows = latent_probe(args.checkpoint, args.probe)
        report["probe"] = {"checkpoint": args.checkpoint, "seed": PROBE_SEED, "by_training_scenes": rows,
                           "seconds": round(time.perf_counter() - t0)}
        print(f"the cube's position from the VAE latent of the top view ({args.checkpoint}), ridge probes, "
              f"RMSE on {rows[0]['test_scenes']} held-out reset scenes")
        for row in rows:
            bias = ", ".join(f"{k} {v:+.2f}" for k, v in row["mean_y_error_cm_by_cube_y"].items())
            print(f"  fitted on {row['training_scenes']:>4} scenes: x {row['rmse_x_cm']:.2f} cm, "
                  f"y {row['rmse_y_cm']:.2f} cm; mean y error by the cube's y (m): {bias}")
    if generator is not None:
        generator.close()
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
