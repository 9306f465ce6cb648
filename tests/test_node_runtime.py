"""run_node: a stop signal ends a node quietly (exit 0, no traceback); a real error still surfaces."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

NODE = textwrap.dedent('''
    import os, signal, sys
    import rclpy
    from rclpy.node import Node
    from cosmos_aloha.node_runtime import run_node

    MODE = sys.argv[1]

    class Probe(Node):
        def __init__(self):
            super().__init__("probe")
            self.create_timer(0.2, self._tick)
            self.unfinished_work = False

        def _tick(self):
            if MODE == "error":
                raise RuntimeError("a real fault in a callback")
            if MODE in ("sigterm", "twice", "unfinished"):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            # What CI saw: SIGINT lands while rclpy converts a received message (take_message); its
            # pybind layer swallows the KeyboardInterrupt and raises RuntimeError, while rclpy.ok() is
            # still True (rclpy runs the Python handler before it shuts the context down).
            try:
                signal.raise_signal(signal.SIGINT)
                sum(range(1000))
            except KeyboardInterrupt:
                raise RuntimeError("Unable to convert call argument '0' to Python object")

        def close(self):
            if MODE == "twice":   # Ctrl-C reaches the group and ros2 launch forwards its own: a second signal
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(100000))
            if MODE == "unfinished":   # a model call that outlives the stop, in a thread that cannot be stopped
                import threading, time
                threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
                self.unfinished_work = True
            print("closed", flush=True)

    code = run_node(Probe, [])
    # Python puts a handler function back to the default at finalization, where a late second SIGINT (the
    # forwarded one) would kill the process (-2); once the node is gone, stop signals are ignored instead.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    sys.exit(code)
''')


def run_probe(mode: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NODE, mode], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["interrupted_take", "sigterm", "twice", "unfinished"])
def test_a_stop_signal_ends_the_node_quietly(ros_env, mode):
    for _ in range(3):  # the race with rclpy's context shutdown differs run to run
        result = run_probe(mode, ros_env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert "closed" in result.stdout


def test_a_callback_error_without_a_signal_still_fails_the_node(ros_env):
    result = run_probe("error", ros_env)
    assert result.returncode != 0
    assert "RuntimeError: a real fault in a callback" in result.stderr
    assert "closed" in result.stdout  # torn down all the same


WATCHER = textwrap.dedent('''
    import json, signal, sys
    import rclpy
    from cosmos_aloha.node_runtime import stop_signals, watch

    stop = stop_signals()
    rclpy.init()
    node = rclpy.create_node("watcher")
    ticks = []

    def tick():
        ticks.append(1)
        if len(ticks) == 3:
            if sys.argv[1] == "error":
                raise RuntimeError("a real fault in a callback")
            # SIGINT inside rclpy's message conversion comes out as this RuntimeError (see the node above).
            try:
                signal.raise_signal(signal.SIGINT)
                sum(range(1000))
            except KeyboardInterrupt:
                raise RuntimeError("Unable to convert call argument '0' to Python object")

    node.create_timer(0.05, tick)
    watch(node, 30.0, stop)
    print(json.dumps({"ticks": len(ticks)}), flush=True)   # the monitors write their summary here
''')


@pytest.mark.parametrize("mode", ["signal", "error"])
def test_a_watch_ends_quietly_on_a_stop_signal_and_surfaces_a_real_error(ros_env, mode):
    result = subprocess.run([sys.executable, "-c", WATCHER, mode], env=ros_env, capture_output=True, text=True,
                            timeout=60)
    if mode == "signal":
        assert result.returncode == 0 and '{"ticks": 3}' in result.stdout, result.stderr[-2000:]
    else:
        assert result.returncode != 0 and "a real fault in a callback" in result.stderr
