"""`cosmos-aloha doctor`: checks that this machine can run the stack (ROS 2 transport; with --realtime, whether
a SCHED_FIFO timer keeps the control period on every CPU)."""
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


def check_realtime(seconds: float = 5.0, priority: int = 40, period_s: float = 0.04) -> list:
    """One bare SCHED_FIFO timer per CPU at the control period, all at once (cosmos_policy_core.realtime)."""
    from cosmos_policy_core.realtime import TimerCheck

    procs = [subprocess.Popen([sys.executable, "-m", "cosmos_policy_core.realtime", "--cpu", str(cpu),
                               "--seconds", str(seconds), "--priority", str(priority), "--period-s", str(period_s)],
                              stdout=subprocess.PIPE, text=True)
             for cpu in sorted(os.sched_getaffinity(0))]
    return [TimerCheck(**json.loads(p.communicate(timeout=seconds + 30)[0])) for p in procs]


def _run(args) -> int:
    if args.realtime:
        checks = check_realtime(args.seconds)
        for check in checks:
            print(f"cpu {check.cpu}: {check.scheduling}, {check.ticks} ticks of {check.period_ms:g} ms, late p50 "
                  f"{check.late_ms_p50:.2f} ms, p99 {check.late_ms_p99:.2f} ms, max {check.late_ms_max:.2f} ms, "
                  f"steal {check.steal_s:.2f} s")
            print("  " + check.verdict())
        return 0 if all(c.verdict().startswith("OK") for c in checks) else 1
    summary = check_ros(args.seconds)
    print(json.dumps(summary, indent=2))
    ok = summary["images"] > 0 and summary["images_ok"] and summary["joints_ok"]
    print("ROS 2 transport:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check the ROS 2 transport between processes, or (--realtime) "
                                                  "the real-time scheduling the executor needs")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--realtime", action="store_true",
                        help="instead: run a SCHED_FIFO 25 Hz timer on each CPU and report how late it woke and how "
                             "much CPU time the hypervisor took (steal)")
    parser.set_defaults(func=_run)
