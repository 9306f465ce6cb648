"""`cosmos-aloha estop [--clear]`: latch or clear the executor's e-stop (std_srvs/Trigger services)."""
from __future__ import annotations

import subprocess
import sys

from cosmos_policy_core.cli.bringup import graph_environment


def _run(args) -> int:
    argv = [sys.executable, "-m", "cosmos_aloha.estop_client", "--timeout", str(args.timeout)]
    if args.clear:
        argv.append("--clear")
    return subprocess.run(argv, env=graph_environment()).returncode


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estop", help="latch the executor's e-stop (hold position), or --clear it",
        description="Calls /cosmos/estop or /cosmos/estop_clear (std_srvs/Trigger). The hold latches until cleared.",
    )
    parser.add_argument("--clear", action="store_true", help="clear a latched e-stop")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the executor")
    parser.set_defaults(func=_run)
