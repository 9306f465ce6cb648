"""`cosmos-aloha doctor`: checks that this machine can run the stack (ROS 2 transport, rendering)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from cosmos_policy_core.cli.bringup import graph_environment


def check_ros(seconds: float = 4.0, height: int = 480, width: int = 640) -> dict:
    """Publish camera-sized images and joint states from one process, receive them in another."""
    env = graph_environment()
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "summary.json")
        sub = subprocess.Popen(
            [sys.executable, "-m", "cosmos_aloha.ros_check", "sub", "--seconds", str(seconds + 3),
             "--json", out],
            env=env,
        )
        time.sleep(1.0)
        subprocess.run(
            [sys.executable, "-m", "cosmos_aloha.ros_check", "pub", "--seconds", str(seconds),
             "--height", str(height), "--width", str(width)],
            env=env, check=True,
        )
        sub.wait(timeout=seconds + 30)
        with open(out) as f:
            return json.load(f)


def _run(args) -> int:
    summary = check_ros(args.seconds)
    print(json.dumps(summary, indent=2))
    ok = summary["images"] > 0 and summary["images_ok"] and summary["joints_ok"]
    print("ROS 2 transport:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check the ROS 2 transport between processes")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.set_defaults(func=_run)
