"""`cosmos-aloha demo`: the README's bounded end-to-end run: `bringup --sim` with a chunk source, measured.

The chunk source is the policy node with the shipped checkpoint (models/) when present, else the scripted demonstration replayed as chunks.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cosmos_policy_core.cli.bringup import graph_environment, graph_module, run_bringup
from cosmos_policy_core.errors import ConfigError

# Checkpoints the project ships (trained in sim), per task; used when present.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SHIPPED_CHECKPOINTS = {"transfer_cube": "aloha_sim_transfer_cube_small"}


def _fmt(value, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def demo_checkpoint(choice: str, task: str) -> Path | None:
    """The policy checkpoint the demo runs: an explicit directory, the shipped one for `task` ("auto"), or none."""
    if choice == "none":
        return None
    if choice == "auto":
        name = SHIPPED_CHECKPOINTS.get(task)
        path = MODELS_DIR / name if name else None
        return path if path is not None and (path / "config.json").is_file() else None
    path = Path(choice)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--checkpoint {choice}: not a checkpoint directory (no config.json)")
    return path


def _run(args) -> int:
    from cosmos_aloha import topics as graph_topics
    from cosmos_policy_core.sim.demos import scripted_rollout

    work = Path(tempfile.mkdtemp(prefix="cosmos_aloha_demo_"))
    checkpoint = demo_checkpoint(args.checkpoint, args.task)
    arguments = {"sim": "true", "task": args.task, "seed": str(args.seed),
                 "image_height": str(args.image_height), "image_width": str(args.image_width)}
    if checkpoint is not None:
        print(f"demo: {args.task} seed {args.seed}: policy node with {checkpoint}, execution "
              + ("as its deploy settings say" if args.temporal_ensemble == "auto" else
                 "with temporal ensembling" if args.temporal_ensemble == "true" else "in whole chunks"))
        # No viewer here: decoding the predicted frames would only space the chunks out on a CPU.
        arguments.update(checkpoint=str(checkpoint), replay="false", temporal_ensemble=args.temporal_ensemble,
                         predicted_images="false", denoising_steps=str(args.denoising_steps or ""))
    else:
        rollout = scripted_rollout(args.task, args.seed)
        trajectory = work / "scripted_actions.npy"
        np.save(trajectory, rollout.commands)
        print(f"demo: {args.task} seed {args.seed}: no policy checkpoint, replaying the scripted demonstration of "
              f"{len(rollout.commands)} steps ({len(rollout.commands) / 25:.0f} s at 25 Hz; offline check: "
              f"{'success' if rollout.success else 'fail'})")
        arguments.update(replay="true", trajectory=str(trajectory))
    plan = graph_module().plan(arguments)
    for name, why in plan.skipped:
        print(f"demo: not starting {name}: {why}")
    print(f"demo: cosmos-aloha bringup --sim ({', '.join(plan.names)}) for {args.seconds:g} s; node logs in {work}/nodes.log")
    env = graph_environment()
    monitor_json = work / "monitor.json"
    monitor = subprocess.Popen(
        [sys.executable, "-m", "cosmos_aloha.graph_monitor", "--seconds", str(max(5.0, args.seconds - 2.0)),
         "--skip", "4", "--json", str(monitor_json)], env=env)
    with open(work / "nodes.log", "w") as log:
        result = run_bringup(plan, args.seconds, env=env, out=log)
    monitor.wait(timeout=60)
    if not monitor_json.exists():
        print("demo: the graph monitor produced no summary", file=sys.stderr)
        return 1
    summary = json.loads(monitor_json.read_text())
    topics = summary["topics"]
    command = topics[graph_topics.JOINT_COMMAND.name]
    chunks = topics[graph_topics.ACTION_CHUNK.name]
    camera = topics[graph_topics.image("cam_high").name]
    executor = summary["executor"]
    print(f"executor loop:   {_fmt(command.get('rate_hz'), 'Hz', 2)} at the subscriber "
          f"(timer: {executor.get('rate_hz', 'n/a')} Hz, jitter p99 {executor.get('jitter_ms_p99', 'n/a')} ms)")
    print(f"chunk latency:   observation -> chunk received p50 {_fmt(chunks.get('latency_ms_p50'), 'ms')} "
          f"p99 {_fmt(chunks.get('latency_ms_p99'), 'ms')} ({chunks['count']} chunks)")
    print(f"sensors:         cameras {_fmt(camera.get('rate_hz'), 'Hz', 2)} {camera.get('shapes')}, "
          f"image latency p99 {_fmt(camera.get('latency_ms_p99'), 'ms')}; "
          f"joint states {_fmt(topics[graph_topics.JOINT_STATES.name].get('rate_hz'), 'Hz', 2)}")
    print(f"sim task:        {'SUCCESS' if summary['sim_success'] else 'not solved'} "
          f"(max reward {summary['sim_max_reward']} of 4)")
    print(f"nodes stopped:   {result.stopped_by}, exit codes {result.returncodes}")
    return 0 if result.ok and chunks["count"] > 0 and command["count"] > 0 else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="bounded end-to-end demo (README): sim bringup, measured")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--task", default="transfer_cube", help="transfer_cube | insertion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="auto",
                        help="policy checkpoint directory; auto = the shipped models/ checkpoint of the task when "
                             "present, else replay the scripted demonstration; none = always replay")
    parser.add_argument("--temporal-ensemble", default="auto", choices=("auto", "true", "false"),
                        help="executor averages the live chunks and the policy queries every few steps (auto: as "
                             "the checkpoint's deploy section says)")
    parser.add_argument("--denoising-steps", type=int, default=1,
                        help="denoising steps per chunk (default 1: on a CPU the checkpoint's 10 would make every "
                             "chunk arrive many control steps late; 0 = the checkpoint's deploy section)")
    # The policy sees 224x224; rendering 480x640 in software GL costs more than 2 cores can spare.
    parser.add_argument("--image-height", type=int, default=224)
    parser.add_argument("--image-width", type=int, default=224)
    parser.set_defaults(func=_run)
