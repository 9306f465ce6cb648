"""GraphSupervisor (the lifecycle manager's decisions) with an injected clock: order, restarts, retries, hangs."""
from __future__ import annotations

import pytest

from cosmos_aloha.supervision import GraphSupervisor, RestartBackoff
from cosmos_policy_core.errors import ConfigError

NODES = ["aloha_sim", "policy", "executor"]


def bring_up(sup: GraphSupervisor, now: float = 0.0) -> list[tuple[str, str]]:
    """Run the supervisor's requests to completion (each succeeds); the requests in order."""
    done = []
    while (action := sup.next_transition(now)) is not None:
        done.append(action)
        sup.transition_result(*action, ok=True, now_s=now)
    return done


def test_startup_goes_in_order_and_waits_for_a_node_not_seen_yet():
    sup = GraphSupervisor(NODES)
    sup.heartbeat("executor", "unconfigured", "30", 0.0)
    assert sup.next_transition(0.0) is None            # the sim is not there yet: nothing may come before it
    sup.heartbeat("aloha_sim", "unconfigured", "10", 0.1)
    assert bring_up(sup) == [("aloha_sim", "configure"), ("aloha_sim", "activate")]   # then waits for policy
    sup.heartbeat("policy", "unconfigured", "20", 0.2)
    assert bring_up(sup) == [("policy", "configure"), ("policy", "activate"),
                             ("executor", "configure"), ("executor", "activate")]
    assert sup.started and sup.level() == "ok"


def test_a_restarted_node_is_brought_back_without_touching_the_others():
    sup = GraphSupervisor(NODES, heartbeat_timeout_s=5.0)
    for i, node in enumerate(NODES):
        sup.heartbeat(node, "unconfigured", str(i), 0.0)
    bring_up(sup)
    events = sup.check(6.0)                            # policy killed: heartbeats stop
    assert [e.node for e in events] == NODES and all(e.level == "error" for e in events)
    for node in ("aloha_sim", "executor"):             # the others keep beating
        sup.heartbeat(node, "active", str(NODES.index(node)), 6.5)
    assert sup.level() == "error" and "NOT RESPONDING" in sup.summary(6.5)["policy"]
    events = sup.heartbeat("policy", "unconfigured", "99", 8.0)   # respawned: a new pid
    assert any("restarted (pid 1 -> 99" in e.message for e in events)
    assert any("responding again" in e.message for e in events)
    assert bring_up(sup, 8.0) == [("policy", "configure"), ("policy", "activate")]
    assert sup.level() == "ok"


def test_a_failed_transition_is_retried_after_the_backoff_and_does_not_hold_back_the_rest():
    sup = GraphSupervisor(NODES, backoff=RestartBackoff(first_s=1.0, factor=2.0, max_s=8.0), settle_s=0.5)
    for i, node in enumerate(NODES):
        sup.heartbeat(node, "unconfigured", str(i), 0.0)
    for expected in (("aloha_sim", "configure"), ("aloha_sim", "activate")):
        assert sup.next_transition(0.0) == expected
        sup.transition_result(*expected, ok=True, now_s=0.0)
    assert sup.next_transition(0.0) == ("policy", "configure")
    events = sup.transition_result("policy", "configure", ok=False, now_s=0.0, detail="engine missing")
    assert "configure failed: engine missing; retrying in 1 s" in events[0].message and sup.level() == "error"
    sup.heartbeat("policy", "unconfigured", "1", 0.6)  # its state is known again
    # The executor does not wait for the failed policy; the policy's retry waits for its back-off.
    assert bring_up(sup, 0.6) == [("executor", "configure"), ("executor", "activate")]
    assert sup.next_transition(1.1) == ("policy", "configure")
    sup.transition_result("policy", "configure", ok=False, now_s=1.1)
    assert sup.watch["policy"].retry_at_s == pytest.approx(1.1 + 2.0)   # doubled


def test_deactivate_goes_in_reverse_order():
    sup = GraphSupervisor(NODES)
    for i, node in enumerate(NODES):
        sup.heartbeat(node, "unconfigured", str(i), 0.0)
    bring_up(sup)
    sup.set_wanted(False)
    assert bring_up(sup) == [("executor", "deactivate"), ("policy", "deactivate"), ("aloha_sim", "deactivate")]
    sup.set_wanted(True)
    assert bring_up(sup) == [("aloha_sim", "activate"), ("policy", "activate"), ("executor", "activate")]


def test_a_heartbeat_that_predates_a_transition_does_not_undo_it():
    sup = GraphSupervisor(["policy"], settle_s=2.0)
    sup.heartbeat("policy", "unconfigured", "1", 0.0)
    assert bring_up(sup, 1.0) == [("policy", "configure"), ("policy", "activate")]
    sup.heartbeat("policy", "inactive", "1", 1.5)      # sent before the activation finished
    assert sup.next_transition(1.5) is None and sup.watch["policy"].state == "active"
    sup.heartbeat("policy", "inactive", "1", 4.0)      # someone deactivated it by hand: respected
    assert sup.watch["policy"].state == "inactive" and sup.next_transition(4.0) is None
    sup.set_wanted(True)                               # ~/startup brings it back
    assert sup.next_transition(4.0) == ("policy", "activate")


def test_a_long_transition_is_no_silence():
    """A model's configure blocks the node's heartbeat for its whole duration: not a hang."""
    sup = GraphSupervisor(["policy"], heartbeat_timeout_s=5.0)
    sup.heartbeat("policy", "unconfigured", "1", 0.0)
    assert sup.next_transition(0.0) == ("policy", "configure")
    assert sup.check(30.0) == []
    sup.transition_result("policy", "configure", ok=True, now_s=30.0)
    assert sup.check(30.1) == [] and sup.watch["policy"].responsive


def test_supervisor_needs_distinct_names():
    with pytest.raises(ConfigError, match="distinct"):
        GraphSupervisor(["policy", "policy"])
