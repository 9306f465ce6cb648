"""Can this machine keep a real-time timer? A bare SCHED_FIFO loop at the control period, and the CPU time the
hypervisor took (steal), per CPU: what the executor's 25 Hz timer can at best achieve here.

`cosmos-aloha doctor --realtime` prints it; the graph tests run it beside a bringup as a witness, so that a
command gap the whole machine caused (a virtual CPU paused by its host) is told apart from one the stack caused.
`realtime_denied` keeps a library from raising its threads above the executor.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def steal_seconds() -> dict[int, float]:
    """Seconds each CPU's hypervisor has run something else while this guest wanted it (0 on bare metal)."""
    steal = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return steal
    for line in lines:
        fields = line.split()
        if fields and fields[0].startswith("cpu") and fields[0] != "cpu" and len(fields) > 8:
            steal[int(fields[0][3:])] = int(fields[8]) / USER_HZ
    return steal


def set_fifo(priority: int) -> str:
    """SCHED_FIFO `priority` for the calling thread; returns the scheduling it got ("normal" when refused)."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return "normal"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError:
        return "normal"
    return f"SCHED_FIFO {priority}"


_CAP_SYS_NICE = 23
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _set_sys_nice(libc, enabled: bool) -> bool:
    """Add or remove CAP_SYS_NICE in this thread's effective capabilities; True if it was there before."""
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    bit = 1 << _CAP_SYS_NICE
    had = bool(data[0].effective & bit)
    data[0].effective = (data[0].effective | bit) if enabled else (data[0].effective & ~bit)
    libc.capset(ctypes.byref(header), data)
    return had


def _realtime_threads() -> dict[int, tuple[int, int]]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            policy = os.sched_getscheduler(int(tid))
            if policy in (os.SCHED_FIFO, os.SCHED_RR):
                out[int(tid)] = (policy, os.sched_getparam(int(tid)).sched_priority)
    return out


@contextlib.contextmanager
def realtime_denied():
    """Within: neither this thread nor a thread it starts can take a real-time priority.

    The AV1 encoder (libsvtav1), run as root, puts the calling thread and its ~40 workers under SCHED_FIFO 99 and
    leaves them there: on a robot that starves the executor (SCHED_FIFO 40), and every process started afterwards
    inherits it. Here the thread's CAP_SYS_NICE and the process's RLIMIT_RTPRIO are lowered for the call, and
    any thread that still came out real-time is put back to normal scheduling.
    """
    if not hasattr(os, "sched_getscheduler") or not os.path.isdir("/proc/self/task"):
        yield
        return
    import resource

    before = _realtime_threads()
    libc = ctypes.CDLL(None, use_errno=True)
    had_nice = _set_sys_nice(libc, False)
    rtprio = resource.getrlimit(resource.RLIMIT_RTPRIO)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_RTPRIO, (0, rtprio[1]))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_RTPRIO, rtprio)
        if had_nice:
            _set_sys_nice(libc, True)
        for tid in set(_realtime_threads()) - set(before):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


@dataclass(frozen=True)
class TimerCheck:
    """A periodic timer's wake-ups on one CPU: how late against its deadlines, and the steal meanwhile."""

    cpu: int | None
    scheduling: str
    period_ms: float
    ticks: int
    late_ms_p50: float
    late_ms_p99: float
    late_ms_max: float
    steal_s: float

    def verdict(self, tolerance_ms: float = 10.0) -> str:
        where = "any CPU" if self.cpu is None else f"CPU {self.cpu}"
        if self.scheduling == "normal":
            return (f"SCHED_FIFO refused on {where}: grant CAP_SYS_NICE or an rtprio limit to the executor "
                    "(docs/ros.md); under normal scheduling its timer waits for the CPU like any process")
        if self.late_ms_max <= tolerance_ms:
            return f"OK: a SCHED_FIFO timer on {where} woke at most {self.late_ms_max:.1f} ms late"
        cause = (f"; the hypervisor took {self.steal_s:.2f} s of it (steal): a virtual machine on a busy host"
                 if self.steal_s > 0.01 else "")
        return (f"LATE: a SCHED_FIFO timer on {where} woke up to {self.late_ms_max:.0f} ms late "
                f"(p99 {self.late_ms_p99:.1f} ms){cause}")


def run_timer(period_s: float, seconds: float, priority: int = 40, cpu: int | None = None,
              events: Path | None = None, late_event_ms: float = 20.0) -> TimerCheck:
    """Wake every `period_s` for `seconds` at SCHED_FIFO `priority` (pinned to `cpu` if given), like the
    executor's timer with no work; measure each wake-up against its deadline.

    `events`: append one JSON line per wake-up later than `late_event_ms` or with steal since the previous
    one (`{"t_ns": wall clock, "cpu", "fifo", "late_ms", "steal_ms"}`), as they happen, so a reader can match
    them to its own time window while this still runs.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    scheduling = set_fifo(priority)
    period_ns = int(period_s * 1e9)
    late_ns: list[int] = []
    stolen0 = steal_seconds()
    steal_prev = stolen0
    out = open(events, "a") if events is not None else None
    try:
        start = time.monotonic_ns()
        deadline = start + period_ns
        end = start + int(seconds * 1e9)
        while deadline <= end:
            pause = deadline - time.monotonic_ns()
            if pause > 0:
                time.sleep(pause / 1e9)
            woke = time.monotonic_ns()
            late_ns.append(woke - deadline)
            if out is not None:
                steal_now = steal_seconds()
                steal_ms = sum(steal_now.get(c, 0.0) - steal_prev.get(c, 0.0)
                               for c in ([cpu] if cpu is not None else steal_now)) * 1e3
                steal_prev = steal_now
                if late_ns[-1] > late_event_ms * 1e6 or steal_ms > 0:
                    out.write(json.dumps({"t_ns": time.time_ns(), "cpu": cpu, "fifo": scheduling != "normal",
                                          "late_ms": late_ns[-1] / 1e6, "steal_ms": steal_ms}) + "\n")
                    out.flush()
            # A timer that fell behind skips the missed deadlines rather than firing in a burst.
            deadline += period_ns * max(1, (woke - deadline) // period_ns + 1)
    finally:
        if out is not None:
            out.close()
    stolen1 = steal_seconds()
    cpus = [cpu] if cpu is not None else list(stolen1)
    late_ms = np.asarray(late_ns, dtype=float) / 1e6 if late_ns else np.zeros(1)
    return TimerCheck(
        cpu=cpu, scheduling=scheduling, period_ms=period_s * 1e3, ticks=len(late_ns),
        late_ms_p50=float(np.percentile(late_ms, 50)), late_ms_p99=float(np.percentile(late_ms, 99)),
        late_ms_max=float(late_ms.max()),
        steal_s=float(sum(stolen1.get(c, 0.0) - stolen0.get(c, 0.0) for c in cpus)),
    )


def read_events(path: Path, t0_ns: int, t1_ns: int) -> list[dict]:
    """The events `run_timer` wrote between two wall-clock stamps."""
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if t0_ns <= e["t_ns"] <= t1_ns]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="a SCHED_FIFO timer with no work, as a witness of this "
                                                 "machine's scheduling")
    parser.add_argument("--period-s", type=float, default=0.04)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--priority", type=int, default=40)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--events", type=Path, default=None)
    args = parser.parse_args(argv)
    check = run_timer(args.period_s, args.seconds, args.priority, args.cpu, args.events)
    print(json.dumps(asdict(check)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
