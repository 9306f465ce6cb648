"""How every cosmos_aloha node process runs: rclpy init, one single-threaded executor, clean shutdown.

rclpy 9.1.2's MultiThreadedExecutor collapses on 2 cores, so each node is its own process and spins here.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def declare_parameters(node: Node, defaults: dict) -> SimpleNamespace:
    """Declare each parameter with its default (YAML / command line override it) and read them back."""
    for name, value in defaults.items():
        node.declare_parameter(name, value)
    return SimpleNamespace(**{name: node.get_parameter(name).value for name in defaults})


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None) -> int:
    """Create the node, spin it until Ctrl-C / SIGTERM / shutdown, then tear it down quietly."""
    rclpy.init(args=sys.argv if argv is None else argv)
    node = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT/SIGTERM shut the context down asynchronously; a callback that was running then fails
        # to publish. That is the shutdown, not an error; anything while the context is fine is.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
