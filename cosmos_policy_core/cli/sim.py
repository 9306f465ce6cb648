"""`cosmos-aloha sim ...`: the MuJoCo ALOHA command group (`demos` writes scripted demonstrations).

Each subcommand registers itself in `register` through its own `_add_<name>` function.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from cosmos_policy_core.errors import ConfigError


def _demos(args) -> int:
    import logging

    from tqdm import tqdm

    from cosmos_policy_core.data.episode import write_episode_hdf5
    from cosmos_policy_core.sim.demos import DemoGenerator
    from cosmos_policy_core.sim.tasks import get_task

    # PyOpenGL announces at INFO that its optional accelerator is missing; irrelevant here.
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    spec = get_task(args.task)
    if args.episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {args.episodes}")
    max_attempts = args.max_attempts or 2 * args.episodes
    if max_attempts < args.episodes:
        raise ConfigError(f"--max-attempts {max_attempts} is below --episodes {args.episodes}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, kept = [], 0
    start = time.perf_counter()
    with DemoGenerator(spec.name, args.height, args.width) as generator, \
            tqdm(total=args.episodes, desc=f"{spec.name} demos", unit="ep") as bar:
        seed = args.seed
        while kept < args.episodes and len(per_seed) < max_attempts:
            result = generator.generate(seed)
            entry = result.summary()
            if result.success:
                path = out / f"episode_{kept}.hdf5"
                write_episode_hdf5(path, result.episode, compress=not args.raw)
                entry["file"] = path.name
                kept += 1
                bar.update(1)
            per_seed.append(entry)
            bar.set_postfix(attempted=len(per_seed), success=f"{kept / len(per_seed):.0%}")
            seed += 1
    report = {
        "task": spec.name,
        "task_description": spec.description,
        "attempted": len(per_seed),
        "kept": kept,
        "success_rate": kept / len(per_seed),
        "fps": 25,
        "steps_per_episode": spec.episode_len_25hz,
        "image_size": [args.height, args.width],
        "compressed": not args.raw,
        "seconds": round(time.perf_counter() - start, 1),
        "per_seed": per_seed,
    }
    (out / "demos_report.json").write_text(json.dumps(report, indent=2))
    print(f"{spec.name}: kept {kept} of {len(per_seed)} attempted "
          f"(scripted success {report['success_rate']:.0%}) -> {out}")
    failed = [e["seed"] for e in per_seed if not e["success"]]
    if failed:
        print(f"failed seeds: {failed}")
    if kept < args.episodes:
        print(f"error: only {kept} of {args.episodes} episodes succeeded within {max_attempts} attempts; "
              "raise --max-attempts or check the report")
        return 1
    return 0


def _add_demos(sim_commands) -> None:
    parser = sim_commands.add_parser(
        "demos",
        help="scripted demonstrations, checked in the joint-space sim, saved as ALOHA HDF5 episodes",
        description="Generate scripted demos (25 Hz, cameras cam_high / cam_left_wrist / cam_right_wrist); "
                    "seeds that fail in the joint-space sim are skipped and reported.",
    )
    parser.add_argument("--task", default="transfer_cube", choices=("transfer_cube", "insertion"))
    parser.add_argument("--episodes", type=int, default=50, help="successful episodes to write")
    parser.add_argument("--out", required=True, help="output directory (episode_<i>.hdf5, demos_report.json)")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed; attempts use seed, seed+1, ...")
    parser.add_argument("--max-attempts", type=int, default=None, help="give up after this many seeds "
                        "(default 2 x episodes)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--raw", action="store_true", help="store raw frames instead of JPEG (~550 MB/episode "
                        "at 480x640)")
    parser.set_defaults(func=_demos)


def register(subparsers) -> None:
    sim = subparsers.add_parser("sim", help="MuJoCo ALOHA simulation: scripted demos, evaluation, planning scores")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")
    sim.set_defaults(func=lambda args: sim.print_help() or 2)
    _add_demos(sim_commands)
    from cosmos_policy_core.cli.sim_eval import add_eval_parser  # `sim eval` lives in its own module

    add_eval_parser(sim_commands)
    from cosmos_policy_core.cli.sim_planning import add_planning_parsers  # score-planning, compare

    add_planning_parsers(sim_commands)
