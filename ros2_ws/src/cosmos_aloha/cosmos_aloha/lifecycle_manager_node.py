"""`lifecycle_manager` node: brings the managed nodes up in order, watches their heartbeats, brings restarts back.

As nav2's lifecycle manager: `node_names` in start order (sim / driver and cameras, policy and planner,
then the executor), configured and activated one by one; `~/deactivate` takes them down in reverse,
`~/startup` up again. Decisions are `supervision.GraphSupervisor`'s; this node only calls the nodes'
`change_state` services and reports on `diagnostics` and in its log.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_srvs.srv import Trigger

from cosmos_aloha import topics
from cosmos_aloha.managed_node import HEARTBEAT_PREFIX, PID_KEY, STATE_KEY
from cosmos_aloha.node_runtime import declare_parameters, run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_aloha.supervision import Event, GraphSupervisor, RestartBackoff

PARAMETERS = (
    Param("node_names", ["aloha_sim", "policy", "executor"],
          "managed nodes in start order; the launch file and `cosmos-aloha bringup` set it from the graph"),
    Param("autostart", True, "bring the nodes up at start; false: wait for the ~/startup service"),
    Param("heartbeat_timeout_s", 5.0, "report a node whose heartbeat (its diagnostics) stops for this long"),
    Param("transition_timeout_s", 300.0, "give up on a configure / activate / deactivate after this long "
                                         "(a model's load and warm-up happen in configure)"),
    Param("retry_first_s", 1.0, "a failed transition is retried after this, doubling each time"),
    Param("retry_max_s", 30.0, "longest wait between retries"),
    Param("diagnostics_hz", 1.0, "the manager's own status on `diagnostics` (cosmos_aloha/lifecycle_manager)"),
)
TRANSITION_IDS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
                  "deactivate": Transition.TRANSITION_DEACTIVATE}
LEVELS = {"ok": DiagnosticStatus.OK, "info": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN,
          "error": DiagnosticStatus.ERROR}


class LifecycleManagerNode(Node):
    def __init__(self):
        super().__init__("lifecycle_manager")
        p = declare_parameters(self, PARAMETERS)
        self.p = p
        self.steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.supervisor = GraphSupervisor(
            list(p.node_names), float(p.heartbeat_timeout_s),
            RestartBackoff(first_s=float(p.retry_first_s), max_s=float(p.retry_max_s)), start_s=self._now())
        self.supervisor.want_up = bool(p.autostart)
        # Persistent clients: a restarted node is reached without a new discovery round on our side.
        self._change_state = {n: self.create_client(ChangeState, f"{n}/change_state") for n in p.node_names}
        self._request = None       # (node, transition, future, sent_s)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS.name, profile(topics.DIAGNOSTICS))
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS.name, self._on_diagnostics,
                                 profile(topics.DIAGNOSTICS))
        self.create_service(Trigger, "~/startup", lambda req, res: self._want(True, res))
        self.create_service(Trigger, "~/deactivate", lambda req, res: self._want(False, res))
        self.create_timer(0.05, self._tick, clock=self.steady)
        self.create_timer(1.0 / float(p.diagnostics_hz), self._publish_status, clock=self.steady)
        self.get_logger().info(f"managing {list(p.node_names)} in this order"
                               + ("" if p.autostart else "; waiting for ~/startup"))

    def _now(self) -> float:
        return time.monotonic()

    # -- inputs -----------------------------------------------------------------------------------------
    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = self._now()
        for status in msg.status:
            if not status.name.startswith(HEARTBEAT_PREFIX):
                continue
            values = {kv.key: kv.value for kv in status.values}
            if STATE_KEY in values and PID_KEY in values:
                node = status.name[len(HEARTBEAT_PREFIX):]
                self._report(self.supervisor.heartbeat(node, values[STATE_KEY], values[PID_KEY], now))

    def _want(self, up: bool, response):
        self.supervisor.set_wanted(up)
        order = "in order" if up else "in reverse order"
        response.success, response.message = True, f"bringing the graph {'up' if up else 'down'} {order}"
        self.get_logger().info(response.message)
        return response

    # -- the loop ---------------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self._now()
        self._report(self.supervisor.check(now))
        if self._request is not None:
            self._poll_request(now)
            return
        action = self.supervisor.next_transition(now)
        if action is None:
            return
        node, transition = action
        client = self._change_state[node]
        if not client.service_is_ready():
            # Its heartbeat arrived before its services were discovered: ask again shortly.
            self.supervisor.in_flight = None
            return
        self.get_logger().info(f"{node}: {transition}")
        future = client.call_async(ChangeState.Request(transition=Transition(id=TRANSITION_IDS[transition])))
        self._request = (node, transition, future, now)

    def _poll_request(self, now: float) -> None:
        node, transition, future, sent = self._request
        if self.supervisor.in_flight != (node, transition):   # the node restarted meanwhile
            self._change_state[node].remove_pending_request(future)
            self._request = None
            return
        if future.done():
            self._request = None
            result = future.result()
            ok = result is not None and bool(result.success)
            self._report(self.supervisor.transition_result(node, transition, ok, now, f"{now - sent:.1f} s"))
        elif now - sent > float(self.p.transition_timeout_s):
            self._change_state[node].remove_pending_request(future)
            self._request = None
            self._report(self.supervisor.transition_result(
                node, transition, False, now, f"no answer within transition_timeout_s {self.p.transition_timeout_s:g} s"))

    # -- reporting --------------------------------------------------------------------------------------
    def _report(self, events: list[Event]) -> None:
        for event in events:
            # rclpy fixes a log call's severity at its first call: one call site per severity.
            if event.level == "error":
                self.get_logger().error(str(event))
            elif event.level == "warn":
                self.get_logger().warning(str(event))
            else:
                self.get_logger().info(str(event))
            self._publish_status(event)

    def _publish_status(self, event: Event | None = None) -> None:
        now = self._now()
        summary = self.supervisor.summary(now)
        if event is not None:
            level, message = LEVELS[event.level], str(event)
        else:
            level = LEVELS[self.supervisor.level()]
            message = "graph up" if level == DiagnosticStatus.OK else ", ".join(
                f"{n}: {s.split(' (')[0]}" for n, s in summary.items() if not s.startswith("active"))
        status = DiagnosticStatus(level=level, name=f"{HEARTBEAT_PREFIX}{self.get_name()}",
                                  hardware_id=self.get_name(), message=message,
                                  values=[KeyValue(key=k, value=v) for k, v in summary.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(argv: list[str] | None = None) -> int:
    return run_node(LifecycleManagerNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
