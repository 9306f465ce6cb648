"""The real-time witness: a bare timer's lateness and steal (cosmos_policy_core.realtime), `doctor
--realtime`, and how the graph tests use it to tell a stalled machine from a late executor."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

from cosmos_policy_core.realtime import (
    TimerCheck,
    read_events,
    realtime_denied,
    run_timer,
    steal_seconds,
)
from machine_witness import MachineWitness, excused_by


def test_a_bare_timer_wakes_at_its_period_and_logs_only_late_wake_ups(tmp_path):
    events = tmp_path / "events.jsonl"
    t0 = time.time_ns()
    check = run_timer(0.02, 0.5, priority=0, events=events, late_event_ms=-1.0)   # every wake-up is "late"
    assert check.scheduling == "normal" and check.cpu is None
    assert 20 <= check.ticks <= 25
    assert 0.0 <= check.late_ms_p50 <= check.late_ms_p99 <= check.late_ms_max
    logged = read_events(events, t0, time.time_ns())
    assert len(logged) == check.ticks and all({"t_ns", "late_ms", "steal_ms"} <= set(e) for e in logged)
    assert read_events(events, 0, t0) == []
    quiet = tmp_path / "quiet.jsonl"
    run_timer(0.02, 0.2, priority=0, events=quiet, late_event_ms=1e6)
    assert not quiet.exists() or all(e["steal_ms"] > 0 for e in read_events(quiet, 0, time.time_ns()))


def test_steal_is_read_per_cpu():
    steal = steal_seconds()
    assert steal and all(v >= 0.0 for v in steal.values())


def test_the_verdict_names_the_cause():
    base = dict(cpu=1, period_ms=40.0, ticks=100, late_ms_p50=0.1, late_ms_p99=0.3)
    assert TimerCheck(scheduling="SCHED_FIFO 40", late_ms_max=0.5, steal_s=0.0, **base).verdict().startswith("OK")
    late = TimerCheck(scheduling="SCHED_FIFO 40", late_ms_max=640.0, steal_s=0.6, **base).verdict()
    assert late.startswith("LATE") and "640 ms" in late and "steal" in late
    assert "CAP_SYS_NICE" in TimerCheck(scheduling="normal", late_ms_max=0.5, steal_s=0.0, **base).verdict()


def test_a_stall_excuses_a_timing_failure_and_nothing_else(tmp_path):
    witness = MachineWitness(tmp_path)
    now = time.time_ns()
    lines = [{"t_ns": now, "cpu": 0, "fifo": True, "late_ms": 650.0, "steal_ms": 0.0},
             {"t_ns": now + 1, "cpu": 1, "fifo": True, "late_ms": 30.0, "steal_ms": 0.0},
             {"t_ns": now + 2, "cpu": 1, "fifo": False, "late_ms": 900.0, "steal_ms": 0.0},
             {"t_ns": now + 3, "cpu": 0, "fifo": False, "late_ms": 0.1, "steal_ms": 60.0},
             {"t_ns": now + 4, "cpu": 0, "fifo": False, "late_ms": 0.1, "steal_ms": 60.0}]
    witness.events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stall = witness.stall(now - 10**9, now + 10**9)
    assert stall is not None and "650 ms late" in stall
    assert witness.stall(now + 1, now + 2) is None        # a 30 ms wake-up, or a late one under normal scheduling
    steal = witness.stall(now + 3, now + 4)                 # 120 ms taken by the hypervisor, in two bites
    assert steal is not None and "120 ms of one CPU" in steal
    with pytest.raises(pytest.skip.Exception, match="machine stalled"):
        with excused_by(stall):
            assert 16.3 > 20.0
    with pytest.raises(AssertionError):
        with excused_by(None):
            assert 16.3 > 20.0
    with excused_by(stall):
        assert 25.0 > 20.0


def test_the_witness_runs_one_timer_per_cpu_and_stops(tmp_path):
    with MachineWitness(tmp_path) as witness:
        time.sleep(1.0)
        procs = list(witness._procs)
        assert all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


def test_doctor_realtime_reports_every_cpu(capsys):
    from cosmos_policy_core.cli import main

    code = main(["doctor", "--realtime", "--seconds", "0.5"])
    out = capsys.readouterr().out
    cpus = len(os.sched_getaffinity(0))
    assert out.count("ticks of 40 ms") == cpus
    verdicts = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(verdicts) == cpus and all(v.startswith(("OK:", "LATE:", "SCHED_FIFO refused")) for v in verdicts)
    assert code == (0 if all(v.startswith("OK") for v in verdicts) else 1)


def _fifo_allowed() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def _realtime_threads() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task") if os.sched_getscheduler(int(t)) != os.SCHED_OTHER]


@pytest.mark.skipif(not _fifo_allowed(), reason="this user may not take SCHED_FIFO at all")
def test_no_thread_takes_a_realtime_priority_inside_realtime_denied():
    done = threading.Event()

    def worker():   # started inside: inherits the denial
        with pytest.raises(PermissionError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))
        done.set()

    with realtime_denied():
        with pytest.raises(PermissionError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert done.is_set()
    assert _fifo_allowed()        # and the permission is back afterwards


@pytest.mark.skipif(not _fifo_allowed(), reason="this user may not take SCHED_FIFO at all")
def test_an_av1_export_leaves_every_thread_at_normal_scheduling(tmp_path):
    """libsvtav1, run with the permission, raises the calling thread and its workers to SCHED_FIFO 99 for good."""
    av = pytest.importorskip("av")
    from cosmos_policy_core.data.mp4 import VideoFileWriter, VideoSettings

    before = set(_realtime_threads())
    with VideoFileWriter(tmp_path / "cam.mp4", 50, VideoSettings(codec="av1")) as writer:
        writer.append(np.random.default_rng(0).integers(0, 255, (10, 64, 64, 3), dtype=np.uint8))
        assert set(_realtime_threads()) <= before
    assert set(_realtime_threads()) <= before
    with av.open(str(tmp_path / "cam.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
