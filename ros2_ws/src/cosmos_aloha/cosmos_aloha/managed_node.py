"""The lifecycle every managed cosmos_aloha node shares: parameters declared once, a heartbeat, autostart alone.

The lifecycle manager (lifecycle_manager_node) drives the graph's nodes through configure and activate in
order and watches the heartbeats; a node started by itself (`ros2 run`) brings itself up (`autostart`).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from cosmos_aloha import topics
from cosmos_aloha.node_runtime import declare_parameters
from cosmos_aloha.parameters import MANAGED_PARAMETERS, Param
from cosmos_aloha.qos import profile

HEARTBEAT_PREFIX = "cosmos_aloha/"   # status name: cosmos_aloha/<node name>
TRANSITION_STATES = ("configuring", "activating", "deactivating", "cleaningup", "shuttingdown", "errorprocessing")
STATE_KEY, PID_KEY = "lifecycle_state", "pid"


def heartbeat_name(node_name: str) -> str:
    return f"{HEARTBEAT_PREFIX}{node_name}"


class ManagedNode(LifecycleNode):
    """A lifecycle node with the graph's conventions. Subclasses override the on_* transitions (calling super)
    and `diagnostic_status` for what their status says."""

    def __init__(self, name: str, parameters: Sequence[Param]) -> None:
        super().__init__(name)
        self.p = declare_parameters(self, (*parameters, *MANAGED_PARAMETERS))
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS.name, profile(topics.DIAGNOSTICS))
        self.steady_clock = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0 / float(self.p.diagnostics_hz), self.publish_diagnostics, clock=self.steady_clock)
        # The first heartbeat as soon as the node spins (the subclass is constructed by then): the manager
        # learns the node, and its pid, at once.
        self._first_heartbeat = self.create_timer(0.0, self._publish_first_heartbeat)
        self._autostart_timer = self.create_timer(0.0, self._autostart) if self.p.autostart else None
        # A transition (a model's load and warm-up) blocks the timers for as long as it runs; meanwhile a
        # thread says what the node is doing, so observers see "configuring" instead of silence.
        self._last_beat = time.monotonic()
        threading.Thread(target=self._beat_during_transitions, name="heartbeat", daemon=True).start()

    @property
    def lifecycle_state(self) -> str:
        """unconfigured | inactive | active | finalized (or a transition in progress)."""
        return self._state_machine.current_state[1]

    @property
    def active(self) -> bool:
        return self.lifecycle_state == "active"

    def _publish_first_heartbeat(self) -> None:
        self._first_heartbeat.cancel()
        self.publish_diagnostics()

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        for transition in (self.trigger_configure, self.trigger_activate):
            if transition() != TransitionCallbackReturn.SUCCESS:
                self.get_logger().fatal(f"autostart: {transition.__name__.removeprefix('trigger_')} failed "
                                        "(see above); exiting so the graph does not run without this node")
                raise SystemExit(1)

    def release(self) -> None:
        """Give back what configure acquired (devices, publishers, a model); called on cleanup and shutdown."""

    def on_cleanup(self, state):
        self.release()
        return super().on_cleanup(state)

    def on_shutdown(self, state):
        self.release()
        return super().on_shutdown(state)

    # -- heartbeat and status -------------------------------------------------------------------------
    def diagnostic_status(self) -> tuple[int, str, dict[str, str]]:
        """(level, message, values) of this node's status; the heartbeat adds the lifecycle state and pid."""
        state = self.lifecycle_state
        return (DiagnosticStatus.OK if state == "active" else DiagnosticStatus.WARN), state, {}

    def _beat_during_transitions(self) -> None:
        period = 1.0 / float(self.p.diagnostics_hz)
        while self.context.ok():
            time.sleep(period)
            state = self.lifecycle_state
            if state in TRANSITION_STATES and time.monotonic() - self._last_beat >= period:
                try:
                    self._publish_status(DiagnosticStatus.WARN, state, {})
                except Exception:   # the node is being destroyed: nothing left to report to
                    return

    def publish_diagnostics(self) -> None:
        self._publish_status(*self.diagnostic_status())

    def _publish_status(self, level: int, message: str, values: dict[str, str]) -> None:
        self._last_beat = time.monotonic()
        values = {**values, STATE_KEY: self.lifecycle_state, PID_KEY: str(os.getpid())}
        status = DiagnosticStatus(level=level, name=heartbeat_name(self.get_name()), hardware_id=self.get_name(),
                                  message=message, values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)
