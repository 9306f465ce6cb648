"""The planner lifecycle node across processes: a plan that meets its deadline is published, one that misses it is dropped."""
from __future__ import annotations

import pytest
from test_policy_node import CAMERAS, SensorProbe, check_chunk, start_node, stop_node

# Smallest best-of-N that still runs every stage: 2 candidates, one world-model and one value sample.
SMALL = ("num_candidates:=2", "action_steps:=1", "world_model_samples:=1", "world_model_max_steps:=1",
         "value_samples:=1", "value_max_steps:=1", "batch_candidates:=2")


@pytest.fixture
def probe(ros_env_in_process):
    p = SensorProbe(ros_env_in_process, prefix="/cosmos/plan/predicted", chunk_topic="/cosmos/plan/action_chunk")
    yield p
    p.close()


def test_planner_publishes_plans_within_the_deadline_and_drops_late_ones(ros_env, probe, tmp_path):
    from cosmos_policy_core.testing import build_random_checkpoint

    ckpt = build_random_checkpoint(tmp_path / "ckpt", image_size=64, tasks=("transfer the cube",))
    # Two planners on one graph: the tight one's outputs are remapped away so each is observed alone.
    tight_topics = ["/cosmos/plan/action_chunk", "/cosmos/plan/predicted/value"] + [
        f"/cosmos/plan/predicted/{c}" for c in CAMERAS]
    tight = start_node("cosmos_aloha.planner_node", ros_env, f"checkpoint:={ckpt}", "deadline_s:=0.02",
                       "return_future_images:=false", *SMALL,
                       remaps=("__node:=planner_tight", *(f"{t}:=/tight{t}" for t in tight_topics)))
    generous = start_node("cosmos_aloha.planner_node", ros_env, f"checkpoint:={ckpt}", "deadline_s:=60.0", *SMALL)
    tight_chunks = []
    from trajectory_msgs.msg import JointTrajectory

    from cosmos_aloha.qos import COMMAND_QOS

    probe.node.create_subscription(JointTrajectory, "/tight/cosmos/plan/action_chunk", tight_chunks.append, COMMAND_QOS)
    try:
        def done() -> bool:
            diag = probe.diagnostics.get("cosmos_aloha/planner_tight", {})
            published = probe.diagnostics.get("cosmos_aloha/planner", {}).get("plans_published", 0)
            return (len(probe.chunks) >= 2 and all(probe.images.values()) and int(published) >= 2
                    and int(diag.get("plans_dropped", 0)) >= 3)

        assert probe.spin(60.0, until=done), (probe.diagnostics, len(probe.chunks))
        for _, msg in probe.chunks:
            check_chunk(msg, probe.sent_stamps)
        for cam, images in probe.images.items():
            assert {(m.height, m.width, m.encoding) for m in images} == {(64, 64, "rgb8")}, cam
        assert probe.values and all(0.0 <= v <= 1.0 for v in probe.values)
        planner = probe.diagnostics["cosmos_aloha/planner"]
        assert "plans_dropped" not in planner
        tight_diag = probe.diagnostics["cosmos_aloha/planner_tight"]
        assert "plans_published" not in tight_diag
        # the configuration each chose from its measured costs, on /diagnostics
        assert (planner["planning"], planner["plan_candidates"], planner["plan_action_steps"]) == ("on", "2", "1")
        assert tight_diag["planning"] == "paused" and "smallest plan" in tight_diag["plan"]
        assert tight_chunks == []                    # a late plan is dropped, never published
    finally:
        out_tight, out = stop_node(tight), stop_node(generous)
    assert "Traceback" not in out + out_tight, (out + out_tight)[-4000:]
    assert "plan dropped (deadline 20 ms)" in out_tight and "planning paused" in out_tight
    assert "plan 1: candidate" in out and "of 2/2 scored" in out
