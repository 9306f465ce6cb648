"""`cosmos-aloha estop [--clear] [--console]`: latch or clear the executor's e-stop (cosmos/estop/request)."""
from __future__ import annotations

import os


def _run(args) -> int:
    if not args.console and not args.clear:
        # An executor on this host latches now, before this process's ROS start-up (0.5-3 s).
        from cosmos_aloha import estop_socket

        estop_socket.engage(args.namespace)
    from cosmos_policy_core.cli.bringup import graph_environment, graph_module

    namespace = graph_module().validate_namespace(args.namespace, "--namespace")
    # The graph's transport settings, before the participant exists (Fast DDS reads them then).
    for key, value in graph_environment().items():
        os.environ.setdefault(key, value)
    from cosmos_aloha import estop_client

    if args.console:
        return estop_client.run_console(namespace, args.timeout)
    return estop_client.run_once(not args.clear, namespace, args.timeout)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estop", help="latch the executor's e-stop (hold position), or --clear it",
        description="An executor on this host gets the request at once on its local socket; then the command "
                    "publishes on cosmos/estop/request (latched) and waits for the executor's cosmos/estop/engaged "
                    "to confirm. The hold latches until cleared; clearing resumes motion with the next chunk "
                    "observed after it, blended from the held pose. ros2 service call /cosmos/estop "
                    "std_srvs/srv/Trigger does the same.",
    )
    parser.add_argument("--clear", action="store_true", help="clear a latched e-stop")
    parser.add_argument("--console", action="store_true",
                        help="stay connected: Enter latches at once (no start-up per request), c + Enter clears")
    parser.add_argument("--namespace", default="", help="the graph's namespace (launch argument namespace)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the executor's confirmation")
    parser.set_defaults(func=_run)
