"""`cosmos-aloha record`: demonstration recording into a rosbag2 directory where `ros2 bag` is not installed.

Runs the `recorder` node (rclpy) in place of this process, so Ctrl-C / SIGTERM reach it and close the bag.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "record",
        help="record cameras, joint states, commands and episode markers into a rosbag2 (MCAP) directory",
        description="Record the topics of config/record_topics.yaml into BAGDIR (metadata.yaml + .mcap "
                    "files). Episodes: call the std_srvs/Trigger services cosmos/recorder/start, "
                    "cosmos/recorder/stop (success) or cosmos/recorder/stop_failure, or publish JSON "
                    "markers on cosmos/episode (all in the graph's namespace). See docs/recording.md.",
    )
    p.add_argument("--out", help="bag directory to create (must not exist or be empty)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--task", default="", help="task string of episodes started with the start service")
    p.add_argument("--sim", action="store_true", help="mark episodes as simulated")
    p.add_argument("--preset", default="", help="topic preset YAML (default: the package's record_topics.yaml)")
    p.add_argument("--split-seconds", type=float, default=0.0,
                   help="close a complete .mcap file this often (default: the preset's, 2 s)")
    p.add_argument("--compress", action="store_true", help="zstd-compress MCAP chunks")
    p.add_argument("--namespace", default="", help="the graph's namespace (launch argument namespace); the bag "
                                                   "stores the topics under the root names all the same")
    p.add_argument("--print-ros2-command", action="store_true",
                   help="print the equivalent `ros2 bag record -s mcap` command and exit")
    p.set_defaults(func=_run)


def _ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)   # a YAML double-quoted string: "true" or "1" stay strings
    return repr(value)


def _run(args) -> int:
    from cosmos_policy_core.data.bags import RecordPreset
    from cosmos_policy_core.errors import ConfigError

    from cosmos_aloha.graph import validate_namespace
    from cosmos_aloha.topics import absolute

    preset = RecordPreset.load(args.preset or None)
    namespace = validate_namespace(args.namespace, "--namespace")
    if args.print_ros2_command:
        print(f"ros2 bag record -s mcap -o {args.out or 'BAGDIR'} "
              + " ".join(absolute(topic, namespace) for topic, _ in preset.topics))
        return 0
    if not args.out:
        raise ConfigError("--out BAGDIR is required")
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new bag directory")
    params = {
        "output": str(out), "preset": str(Path(args.preset).resolve()) if args.preset else "",
        "split_seconds": float(args.split_seconds), "compress": bool(args.compress), "task": args.task,
        "sim": bool(args.sim), "max_seconds": float(args.seconds),
    }
    argv = [sys.executable, "-m", "cosmos_aloha.recorder_node", "--ros-args"]
    if namespace:
        argv += ["-r", f"__ns:={namespace}"]
    for name, value in params.items():
        argv += ["-p", f"{name}:={_ros_value(value)}"]
    env = dict(os.environ)
    # Same transport settings as every process of the graph (see DESIGN.md §4).
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached
