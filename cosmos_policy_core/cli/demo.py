"""`cosmos-aloha demo`: the README's bounded end-to-end run on this machine's embedded default."""
from __future__ import annotations

from cosmos_policy_core.cli.doctor import check_ros


def _run(args) -> int:
    summary = check_ros(args.seconds)
    print(
        f"ROS 2 cross-process: {summary['images']} images / {summary['joint_states']} joint states, "
        f"latency p50 {summary['latency_ms_p50']:.1f} ms p99 {summary['latency_ms_p99']:.1f} ms"
    )
    return 0 if summary["images"] and summary["images_ok"] and summary["joints_ok"] else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="bounded end-to-end demo (README)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.set_defaults(func=_run)
