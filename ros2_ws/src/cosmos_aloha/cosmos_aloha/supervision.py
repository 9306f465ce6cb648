"""Supervision of the graph, without ROS: the restart back-off rule and the lifecycle manager's decisions.

`RestartBackoff` is the one rule for restarting a crashed node (launch and `cosmos-aloha bringup` both use
it) and for retrying a failed transition. `GraphSupervisor` decides which lifecycle transition the manager
requests next (up in order, down in reverse) from the nodes' heartbeats and the transitions' results,
and says what happened in `Event`s for the log and `diagnostics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cosmos_policy_core.errors import ConfigError

# Lifecycle transitions the manager requests, and the state each leads to when it succeeds.
GOAL_STATE = {"configure": "inactive", "activate": "active", "deactivate": "inactive"}


@dataclass(frozen=True)
class RestartBackoff:
    """Wait first_s * factor**k before the k-th restart in a row (k from 0), at most max_s. A node that ran
    (or a transition that held) for reset_after_s counts as healthy again: the next failure waits first_s."""

    first_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def __post_init__(self) -> None:
        if not (self.first_s > 0 and self.factor >= 1 and self.max_s >= self.first_s and self.reset_after_s > 0):
            raise ConfigError(f"RestartBackoff needs first_s > 0, factor >= 1, max_s >= first_s, reset_after_s > 0; "
                              f"got {self}")

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * self.factor ** max(0, attempt))

    def next_attempt(self, attempt: int, ran_s: float) -> int:
        """The attempt number of the next restart after a run of `ran_s` seconds ended."""
        return 0 if ran_s >= self.reset_after_s else attempt + 1


@dataclass(frozen=True)
class Event:
    level: str      # "info" | "warn" | "error"
    node: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: {self.message}"


@dataclass
class _Watch:
    state: str | None = None             # as far as the manager knows; None = not seen / unknown
    pid: str | None = None
    heartbeat_s: float | None = None
    responsive: bool = True
    failures: int = 0                    # failed transitions in a row
    retry_at_s: float = 0.0
    settled_at_s: float = 0.0            # the last transition's result: heartbeats sent before it may lag
    ever_up: bool = False                # active at least once, or failed (startup need not wait for it)
    drive: bool = True                   # the manager still has to bring it where the graph should be; a
                                         # change made by hand (`ros2 lifecycle set`) is left alone


class GraphSupervisor:
    """Which transition to request next, one at a time: while the graph should be up, in order, the first
    seen node that is unconfigured (configure) or inactive (activate); while it should be down, in reverse
    order, the first active node (deactivate). During start-up a node not seen yet holds back the nodes
    after it, so sensors come before the policy and the policy before the executor; afterwards a node
    that restarts (a new pid in its heartbeat) is brought back on its own. A failed transition is retried
    after `backoff`. A node whose heartbeat stops for `heartbeat_timeout_s` is reported, once, and again
    when it responds. A state changed by hand (`ros2 lifecycle set`) stays until the next start-up or
    `set_wanted`."""

    def __init__(self, nodes: Sequence[str], heartbeat_timeout_s: float = 5.0,
                 backoff: RestartBackoff = RestartBackoff(), settle_s: float = 2.0, start_s: float = 0.0) -> None:
        if not nodes or len(set(nodes)) != len(nodes):
            raise ConfigError(f"the lifecycle manager needs distinct node names, got {list(nodes)}")
        if not heartbeat_timeout_s > 0:
            raise ConfigError(f"heartbeat_timeout_s must be positive, got {heartbeat_timeout_s}")
        self.nodes = tuple(nodes)
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.backoff = backoff
        self.settle_s = settle_s
        self.want_up = True
        self.in_flight: tuple[str, str] | None = None
        self.watch = {n: _Watch() for n in self.nodes}
        self._start_s = start_s
        self._waiting_reported: set[str] = set()

    @property
    def started(self) -> bool:
        """Every node has been up (or failed) once: start-up order no longer holds anyone back."""
        return all(w.ever_up for w in self.watch.values())

    # -- inputs -----------------------------------------------------------------------------------------
    def heartbeat(self, node: str, state: str, pid: str, now_s: float) -> list[Event]:
        w = self.watch.get(node)
        if w is None:
            return []
        events = []
        if w.pid is None:
            events.append(Event("info", node, f"up (pid {pid}, {state})"))
            w.state = state
        elif pid != w.pid:
            events.append(Event("warn", node, f"restarted (pid {w.pid} -> {pid}, {state})"
                                + (": bringing it back up" if self.want_up else "")))
            w.state, w.failures, w.retry_at_s, w.drive = state, 0, 0.0, True
            if self.in_flight is not None and self.in_flight[0] == node:
                self.in_flight = None   # the request went to the old process
        elif self.in_flight is None or self.in_flight[0] != node:
            # A heartbeat sent before our last transition finished may arrive after its result.
            if w.state is None or now_s - w.settled_at_s >= self.settle_s:
                w.state = state
        if not w.responsive:
            silent = now_s - w.heartbeat_s if w.heartbeat_s is not None else 0.0
            events.append(Event("info", node, f"responding again after {silent:.1f} s"))
        w.pid, w.heartbeat_s, w.responsive = pid, now_s, True
        return events

    def transition_result(self, node: str, transition: str, ok: bool, now_s: float, detail: str = "") -> list[Event]:
        """The outcome of the request `next_transition` gave (ok=False: failed, refused or timed out)."""
        if self.in_flight == (node, transition):
            self.in_flight = None
        w = self.watch[node]
        w.settled_at_s = now_s
        if ok:
            w.heartbeat_s = now_s   # it answered: alive, though its heartbeats waited behind the transition
            w.state, w.failures = GOAL_STATE[transition], 0
            if w.state == "active":
                w.ever_up = True
            if w.state == ("active" if self.want_up else "inactive"):
                w.drive = False
            return [Event("info", node, f"{transition}d" + (f" ({detail})" if detail else ""))]
        delay = self.backoff.delay(w.failures)
        w.failures += 1
        w.retry_at_s = now_s + delay
        w.ever_up = True
        w.state = None   # unknown until the next heartbeat says
        return [Event("error", node, f"{transition} failed{': ' + detail if detail else ''}; "
                                     f"retrying in {delay:.0f} s (failure {w.failures} in a row)")]

    def check(self, now_s: float) -> list[Event]:
        """Heartbeat timeouts (call it periodically)."""
        events = []
        for node, w in self.watch.items():
            if self.in_flight is not None and self.in_flight[0] == node:
                continue   # a long transition (a model's warm-up) blocks the node's heartbeat
            if w.heartbeat_s is None:
                if now_s - self._start_s > self.heartbeat_timeout_s and node not in self._waiting_reported:
                    self._waiting_reported.add(node)
                    events.append(Event("warn", node, f"not seen yet after {now_s - self._start_s:.0f} s "
                                                      "(still starting, or not started)"))
                continue
            if w.responsive and now_s - w.heartbeat_s > self.heartbeat_timeout_s:
                w.responsive = False
                events.append(Event("error", node, f"no heartbeat for {now_s - w.heartbeat_s:.1f} s "
                                                   "(stopped, hung or crashed)"))
        return events

    def set_wanted(self, up: bool) -> None:
        """Bring the graph up (in order) or down to inactive (in reverse order)."""
        self.want_up = up
        for w in self.watch.values():
            w.failures, w.retry_at_s, w.drive = 0, 0.0, True

    # -- the decision -----------------------------------------------------------------------------------
    def next_transition(self, now_s: float) -> tuple[str, str] | None:
        if self.in_flight is not None:
            return None
        if self.want_up:
            for node in self.nodes:
                w = self.watch[node]
                if w.state is None or not w.responsive:
                    if w.pid is None and not self.started:
                        return None          # start-up order: wait for this node first
                    continue
                if w.retry_at_s > now_s or not w.drive:
                    continue
                if w.state == "unconfigured":
                    return self._request(node, "configure")
                if w.state == "inactive":
                    return self._request(node, "activate")
                if w.state == "active":
                    w.ever_up = True
            return None
        for node in reversed(self.nodes):
            w = self.watch[node]
            if w.drive and w.state == "active" and w.responsive and w.retry_at_s <= now_s:
                return self._request(node, "deactivate")
        return None

    def _request(self, node: str, transition: str) -> tuple[str, str]:
        self.in_flight = (node, transition)
        return self.in_flight

    def summary(self, now_s: float) -> dict[str, str]:
        """One line per node for the manager's status."""
        out = {}
        for node, w in self.watch.items():
            if w.heartbeat_s is None:
                out[node] = "not seen"
                continue
            state = w.state or "unknown"
            if self.in_flight is not None and self.in_flight[0] == node:
                state = f"{self.in_flight[1]} in progress"
            out[node] = (f"{state} (pid {w.pid}, heartbeat {now_s - w.heartbeat_s:.1f} s ago"
                         + ("" if w.responsive else ", NOT RESPONDING") + ")")
        return out

    def level(self) -> str:
        """ok: every node active and responding; error: one silent or failing; warn otherwise."""
        if any(not w.responsive or w.failures for w in self.watch.values()):
            return "error"
        wanted = "active" if self.want_up else "inactive"
        return "ok" if all(w.state == wanted for w in self.watch.values()) else "warn"
