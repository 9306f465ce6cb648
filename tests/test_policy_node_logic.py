"""The ROS-free logic under the policy and planner nodes: observation sync, remaining-steps trigger, worker."""
from __future__ import annotations

import threading
import time

import pytest

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.scheduling import ChunkTrigger, InferenceWorker, LatencyWindow, TriggerConfig, remaining_steps
from cosmos_policy_core.runtime.sync import ObservationSynchronizer, SyncConfig

MS = 1_000_000
STREAMS = ("cam_high", "cam_left_wrist", "joint_states")


def sync(max_skew_ms=20.0, max_age_ms=500.0, depth=8):
    return ObservationSynchronizer(SyncConfig.from_ms(STREAMS, "joint_states", max_skew_ms, max_age_ms, depth))


def add_tick(s, t_ms, skip=(), offsets=None):
    for name in STREAMS:
        if name not in skip:
            s.add(name, (t_ms + (offsets or {}).get(name, 0)) * MS, f"{name}@{t_ms}")


def test_sync_picks_newest_complete_set_and_waits_for_missing_streams():
    s = sync()
    assert s.latest() is None and s.why_not() == f"waiting for {', '.join(STREAMS)}"
    add_tick(s, 1000)
    add_tick(s, 1040, skip=("cam_left_wrist",))   # this tick's left camera has not arrived yet
    got = s.latest(1045 * MS)
    # joint 1040 with cam_left_wrist@1000 is 40 ms apart (> 20): the newest full set is tick 1000
    assert got.stamp_ns == 1000 * MS and got.items["cam_high"] == "cam_high@1000"
    assert not got.complete                        # newer data of some streams exists: a fresher set is coming
    s.add("cam_left_wrist", 1040 * MS, "late")
    got = s.latest(1045 * MS)
    assert got.stamp_ns == 1040 * MS and got.items["cam_left_wrist"] == "late" and got.complete
    assert got.skew_ns == 0


def test_sync_skew_is_measured_from_the_reference_and_out_of_order_arrivals_are_sorted():
    s = sync(max_skew_ms=20.0)
    # 30 fps camera against 25 Hz joints: nearest frame within 17 ms of each joint state
    s.add("joint_states", 1000 * MS, "j0")
    s.add("cam_high", 1017 * MS, "h1")
    s.add("cam_high", 981 * MS, "h0")              # arrives late, inserted in stamp order
    s.add("cam_left_wrist", 1012 * MS, "l0")
    got = s.latest()
    assert got.items == {"joint_states": "j0", "cam_high": "h1", "cam_left_wrist": "l0"}
    assert got.skew_ns == 17 * MS
    s.add("cam_left_wrist", 1012 * MS, "l0-resent")  # same stamp replaces
    assert s.latest().items["cam_left_wrist"] == "l0-resent"
    tight = sync(max_skew_ms=10.0)
    for name, stamp in (("joint_states", 1000), ("cam_high", 1017), ("cam_left_wrist", 1012)):
        tight.add(name, stamp * MS, name)
    assert tight.latest() is None
    assert "no set within 10 ms: cam_high is +17 ms from joint_states" == tight.why_not()


def test_sync_refuses_stale_observations_and_keeps_depth():
    s = sync(max_age_ms=100.0, depth=3)
    for t in range(1000, 1400, 40):
        add_tick(s, t)
    assert s.latest(1400 * MS).stamp_ns == 1360 * MS
    assert s.latest(1500 * MS) is None
    assert s.why_not(1500 * MS).startswith("joint_states is stale: newest 140 ms old")
    assert len(s._stamps["cam_high"]) == 3
    s.add("cam_high", 900 * MS, "ancient")         # older than everything kept: dropped again at once
    assert s._stamps["cam_high"] == [1280 * MS, 1320 * MS, 1360 * MS]
    with pytest.raises(ConfigError, match="unknown stream"):
        s.add("cam_low", 0, None)
    with pytest.raises(ConfigError, match="reference"):
        SyncConfig(("a", "b"), "c")


def test_remaining_steps_follow_the_executor_schedule():
    step = 40 * MS
    assert remaining_steps(0, 50, step, -5 * MS) == 50     # stamped in the future: nothing started
    assert remaining_steps(0, 50, step, 0) == 49            # step 0 is due now
    assert remaining_steps(0, 50, step, 39 * MS) == 49
    assert remaining_steps(0, 50, step, 40 * MS) == 48
    assert remaining_steps(0, 50, step, 1000 * MS) == 24
    assert remaining_steps(0, 50, step, 5000 * MS) == 0


def test_trigger_starts_once_per_observation_and_when_the_chunk_runs_low():
    trig = ChunkTrigger(TriggerConfig(trigger_remaining_steps=25, chunk_len=50, step_ns=40 * MS))
    assert trig.should_start(now_ns=0, observation_stamp_ns=0, busy=False)   # no chunk yet
    assert not trig.should_start(0, 0, busy=True)
    trig.started(0)
    assert not trig.should_start(10 * MS, 0, busy=False)                    # same observation again
    trig.published(0)
    # chunk stamped 0: 25 steps remain from t = 960 ms on
    assert not trig.should_start(920 * MS, 920 * MS, busy=False) and trig.remaining(920 * MS) == 26
    assert trig.should_start(960 * MS, 960 * MS, busy=False)
    trig.published(-40 * MS)                                                 # an older chunk never wins
    assert trig.last_chunk_stamp_ns == 0
    with pytest.raises(ConfigError, match="trigger_remaining_steps"):
        TriggerConfig(trigger_remaining_steps=51)


def test_latency_trigger_starts_the_measured_latency_plus_a_margin_before_the_chunk_ends():
    cfg = TriggerConfig(trigger_remaining_steps=25, chunk_len=50, step_ns=40 * MS, mode="latency", margin_steps=2)
    trig = ChunkTrigger(cfg)
    assert trig.threshold(None) == 25                   # nothing measured yet: the fixed threshold
    assert trig.threshold(0.0) == 2
    assert trig.threshold(0.080) == 4                   # exactly 2 steps of latency + 2
    assert trig.threshold(0.081) == 5                   # a little more rounds up to 3 steps
    assert trig.threshold(10.0) == 49                   # slower than a chunk: back to back
    trig.started(0)
    trig.published(0)
    # chunk stamped 0, latency 150 ms (4 steps) + 2: start at 6 steps left, t = 43 steps = 1720 ms
    assert not trig.should_start(1680 * MS, 1680 * MS, busy=False, latency_s=0.150)
    assert trig.should_start(1720 * MS, 1720 * MS, busy=False, latency_s=0.150)
    assert trig.should_start(960 * MS, 960 * MS, busy=False, latency_s=None)   # until measured: 25 left
    fixed = ChunkTrigger(TriggerConfig(trigger_remaining_steps=25, chunk_len=50, step_ns=40 * MS))
    assert fixed.threshold(0.150) == 25                 # fixed mode ignores the latency
    with pytest.raises(ConfigError, match="mode"):
        TriggerConfig(mode="auto")
    with pytest.raises(ConfigError, match="margin_steps"):
        TriggerConfig(margin_steps=50)


def test_worker_runs_one_job_at_a_time_off_the_caller_thread_and_survives_errors():
    started, release = threading.Event(), threading.Event()
    ran, errors = [], []

    def run(job):
        ran.append((job, threading.current_thread().name))
        if job == "boom":
            raise RuntimeError("model failed")
        started.set()
        release.wait(5)

    worker = InferenceWorker(run, name="test_worker", on_error=errors.append)
    try:
        t0 = time.monotonic()
        assert worker.submit("a")
        assert time.monotonic() - t0 < 0.5          # submit never waits for the job
        assert started.wait(5) and worker.busy
        assert not worker.submit("b")                # refused while busy, not queued
        release.set()
        assert worker.wait_idle(5)
        assert worker.submit("boom") and worker.wait_idle(5)
        assert [j for j, _ in ran] == ["a", "boom"] and ran[0][1] == "test_worker"
        assert isinstance(errors[0], RuntimeError) and not worker.busy
        release.clear()
        started.clear()
        assert worker.submit("c") and started.wait(5)
    finally:
        release.set()
        assert worker.stop(5)                        # lets the running job finish, then ends
    assert not worker.submit("d")


def test_latency_window_percentiles():
    w = LatencyWindow(size=3)
    assert w.percentile(50) is None
    for v in (5.0, 1.0, 2.0, 3.0):
        w.add(v)
    assert len(w) == 3 and w.percentile(50) == 2.0 and w.percentile(100) == 3.0
