"""How every cosmos_aloha node process runs: parameters, rclpy init, one single-threaded executor, clean stop.

rclpy 9.1.2's MultiThreadedExecutor collapses on 2 cores, so each node is its own process and spins here.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from types import SimpleNamespace
from typing import Callable, Sequence

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from cosmos_aloha.parameters import Param


def declare_parameters(node: Node, params: Sequence[Param]) -> SimpleNamespace:
    """Declare each parameter with its default and description (YAML / command line override the value) and
    read them back."""
    for p in params:
        node.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
    return SimpleNamespace(**{p.name: node.get_parameter(p.name).value for p in params})


def apply_realtime_priority(node: Node, priority: int) -> bool:
    """Run every thread of this process (rclpy's and the DDS threads) under SCHED_FIFO `priority`.

    Measured here: the executor's 25 Hz timer jitter p99 dropped from 60-150 ms to 1-2.5 ms with a
    CPU-heavy process and a loaded machine (benchmarks/ros_pipeline.py). Needs CAP_SYS_NICE or an
    rtprio limit (/etc/security/limits.conf); without it the node warns and runs normally.
    """
    if priority <= 0:
        return False
    if not hasattr(os, "sched_setscheduler"):
        node.get_logger().warning("real-time scheduling is not available on this OS; running normally")
        return False
    try:
        for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as exc:
        node.get_logger().warning(
            f"could not set SCHED_FIFO priority {priority} ({exc}); running with normal scheduling. "
            "Grant CAP_SYS_NICE or an rtprio limit for the executor (docs/ros.md)"
        )
        return False
    node.get_logger().info(f"running under SCHED_FIFO priority {priority}")
    return True


class StopSignals:
    """Remembers that SIGINT / SIGTERM arrived; the first one raises KeyboardInterrupt, later ones are ignored.

    Installed before rclpy.init, so rclpy's own handler (which shuts the context down) chains to it. The
    first signal interrupts whatever the main thread runs (a long configure included). A stop usually
    brings two: Ctrl-C reaches the whole process group and `ros2 launch` forwards its own SIGINT, and
    escalates to SIGTERM; raising again would break the teardown the first one started.

    rclpy runs this handler before it marks the context shut down, so a callback the signal interrupts can
    fail while `rclpy.ok()` still says True; a signal that lands while rclpy converts a received message
    (`take_message`) comes out of its pybind layer as "RuntimeError: Unable to convert call argument '0'
    to Python object". The flag tells that apart from a real error.
    """

    def __init__(self):
        self.received: int | None = None
        self.tearing_down = False

    def __call__(self, signum, frame):
        first = self.received is None
        self.received = signum
        if first and not self.tearing_down:
            raise KeyboardInterrupt


def stop_signals() -> StopSignals:
    """Install StopSignals for SIGINT / SIGTERM; call before rclpy.init so that rclpy's handler chains to it."""
    stop = StopSignals()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    return stop


def watch(node: Node, seconds: float, stop: StopSignals) -> None:
    """Spin `node` for `seconds` or until a stop signal, for observers that report what they saw when they end:
    a signal ends the watch quietly, also one that lands inside rclpy's message conversion."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if stop.received is None:
            raise
    finally:
        stop.tearing_down = True
        executor.shutdown()


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None) -> int:
    """Create the node, spin it until Ctrl-C / SIGTERM / shutdown, then tear it down quietly.

    A node whose `close()` leaves work running in a thread that cannot be interrupted (a model call in
    C++) says so with `unfinished_work`; the process then ends at once after the teardown (exit 0, as
    the stop was asked for) instead of letting the interpreter finalize under that thread, which aborts.
    """
    stop = stop_signals()
    rclpy.init(args=sys.argv if argv is None else argv)
    holder: list[Node] = []
    try:
        _spin(make_node, holder, stop)
    except KeyboardInterrupt:
        pass   # the first stop signal landed between the spin and the teardown (which has run)
    # The node is gone; a stop signal still on its way (Ctrl-C reaches the group and ros2 launch forwards
    # another) must not kill the process while Python finalizes, which puts our handler back to the
    # default one (exit -2). Ignored signals stay ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if holder and getattr(holder[0], "unfinished_work", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _spin(make_node: Callable[[], Node], holder: list[Node], stop: StopSignals) -> None:
    try:
        holder.append(make_node())
        executor = SingleThreadedExecutor()
        executor.add_node(holder[0])
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A stop signal makes a running callback fail (a publish on a context being shut down, a take
        # interrupted mid-conversion). That is the shutdown, not an error; anything else is.
        if rclpy.ok() and stop.received is None:
            raise
    finally:
        # rclpy's own handler may end the spin (context shut down) before Python runs ours: a signal
        # arriving from here on must not interrupt the teardown.
        stop.tearing_down = True
        if holder:
            close = getattr(holder[0], "close", None)
            if close is not None:
                close()
            holder[0].destroy_node()
        rclpy.try_shutdown()
