"""Two emulated hosts on one machine: network namespaces joined by a veth pair, for the two-host graph tests.

Each namespace has its own interfaces and address, so Fast DDS takes the other side for another host (its host
id comes from the interface addresses) and talks UDP across the veth; the GPU side also gets its own /dev/shm
(held by an anchor process whose mount namespace every GPU-side command enters), as another host would.
`TwoHosts` creates everything on enter and removes it on exit (also on failure), stopping what it started.
Needs root (CAP_NET_ADMIN) and iproute2; `unavailable()` says why not.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROBOT, GPU = "robot", "gpu"
SIDES = (ROBOT, GPU)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can): tried for real, then removed."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    probe = f"cosmos_probe_{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class TwoHosts:
    """`robot` and `gpu` namespaces, 10.231.X.1 and .2 on a veth pair; `start()` runs a command on one side."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 1000:03d}{random.randint(0, 99):02d}"
        self.netns = {ROBOT: f"cosmos_robot_{tag}", GPU: f"cosmos_gpu_{tag}"}
        self.interface = {ROBOT: f"cr{tag}", GPU: f"cg{tag}"}          # <= 15 characters
        subnet = random.randint(1, 254)
        self.address = {ROBOT: f"10.231.{subnet}.1", GPU: f"10.231.{subnet}.2"}
        self.processes: list[subprocess.Popen] = []
        self._made: list[str] = []
        self._anchor: subprocess.Popen | None = None

    def peer(self, side: str) -> str:
        return self.address[GPU if side == ROBOT else ROBOT]

    # -- set up and tear down ---------------------------------------------------------------------------
    def __enter__(self) -> "TwoHosts":
        try:
            for side in SIDES:
                _ip("netns", "add", self.netns[side])
                self._made.append(self.netns[side])
            _ip("link", "add", self.interface[ROBOT], "type", "veth", "peer", "name", self.interface[GPU])
            for side in SIDES:
                ns, dev = self.netns[side], self.interface[side]
                _ip("link", "set", dev, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{self.address[side]}/24", "dev", dev)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", dev, "up")
            self._anchor = subprocess.Popen(
                ["ip", "netns", "exec", self.netns[GPU], "sh", "-c",
                 "mount -t tmpfs -o size=2g cosmos_shm /dev/shm && exec sleep 100000"], start_new_session=True)
            self._wait_for_private_shm()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait_for_private_shm(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        mounts = Path(f"/proc/{self._anchor.pid}/mounts")
        while time.monotonic() < deadline:
            if self._anchor.poll() is not None:
                raise RuntimeError(f"could not mount a private /dev/shm in {self.netns[GPU]} "
                                   f"(exit {self._anchor.returncode})")
            if mounts.exists() and "cosmos_shm /dev/shm" in mounts.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"no private /dev/shm in {self.netns[GPU]} after {timeout:g} s")

    def close(self) -> None:
        """Stop what was started here (SIGINT, then SIGKILL), kill anything left in the namespaces, delete them."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._anchor is not None:
            self._anchor.kill()
            self._anchor.wait(timeout=10)
            self._anchor = None
        for ns in self._made:
            # Children of what we started that outlived it (a node orphaned by a killed bringup).
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)   # also removes the veth pair
        self._made = []

    # -- running things on a side ------------------------------------------------------------------------
    def command(self, side: str, argv: list[str]) -> list[str]:
        """`argv` inside `side`'s namespace (on the GPU side, with the anchor's private /dev/shm)."""
        if side == GPU:
            return ["nsenter", "-t", str(self._anchor.pid), "-m", "-n", "--", *argv]
        return ["ip", "netns", "exec", self.netns[side], *argv]

    def start(self, side: str, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
        out = open(log, "w")
        process = subprocess.Popen(self.command(side, argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        out.close()
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 30.0) -> int:
        """SIGINT (Ctrl-C) and wait; SIGKILL after `timeout`."""
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)

    def set_link(self, up: bool) -> int:
        """Take the robot side of the link down or up; returns the time (ns, CLOCK_REALTIME) it took effect."""
        _ip("-n", self.netns[ROBOT], "link", "set", self.interface[ROBOT], "up" if up else "down")
        return time.time_ns()

    def counters(self, side: str = ROBOT) -> tuple[int, int]:
        """(rx_bytes, tx_bytes) of `side`'s veth end."""
        out = subprocess.run(["ip", "netns", "exec", self.netns[side], "cat",
                              f"/sys/class/net/{self.interface[side]}/statistics/rx_bytes",
                              f"/sys/class/net/{self.interface[side]}/statistics/tx_bytes"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.split()
        return int(out[0]), int(out[1])


# -- the split graph, observed ----------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
CLI = ["-c", "import sys; from cosmos_policy_core.cli import main; sys.exit(main())"]


def side_environment(base: dict, hosts: TwoHosts, side: str) -> dict:
    """What bringup --role <side> gives its nodes, for the other processes of that side (observers)."""
    from cosmos_aloha import graph, roles

    env = dict(base)
    env.update(roles.environment(side, graph.package_dir() / "config", hosts.peer(side), env))
    return env


def wait_for_line(log: Path, text: str, timeout: float, process=None) -> float:
    """Seconds until `text` appears in `log`; TimeoutError (with the log's tail) if it does not."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if log.exists() and text in log.read_text(errors="replace"):
            return time.monotonic() - start
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    raise TimeoutError(f"no {text!r} in {log.name} after {time.monotonic() - start:.0f} s:\n{tail}")


def run_split_graph(hosts: TwoHosts, out: Path, base_env: dict, *, robot_args: list[str], gpu_args: list[str] | None,
                    probe_images: str = "none", steady_s: float = 8.0, outage_s: float = 2.0,
                    after_s: float = 10.0, skew_offset_s: float | None = None, ready_timeout_s: float = 240.0,
                    ready_line: str = "state play") -> dict:
    """Robot side (`bringup --role robot`) in one namespace, GPU side (`bringup --role gpu`) in the other, an
    observer (link_monitor) beside the robot and, with `probe_images`, an image probe on the GPU side.

    Once the executor plays (`ready_line` in the robot log): `steady_s` of normal running, the link down for
    `outage_s` (0: no outage), `after_s` more; then, with `skew_offset_s`, a GPU-side chunk source stamping with a clock that
    far ahead for 3 s, and 3 s to see the executor's verdict. Returns the observer's and probe's summaries
    with the phase times (ns, the machine's clock, which both namespaces share). `gpu_args` None: the whole
    graph on the robot side (`--role all`, one host: the baseline).
    """
    robot_log, gpu_log = out / "robot.log", out / "gpu.log"
    one_host = gpu_args is None
    role = ["--role", "all"] if one_host else ["--role", "robot", "--peers", hosts.peer(ROBOT)]
    robot = hosts.start(ROBOT, [_python(), *CLI, "bringup", *role, *robot_args], base_env, robot_log)
    gpu = None if one_host else hosts.start(
        GPU, [_python(), *CLI, "bringup", "--role", "gpu", "--peers", hosts.peer(GPU), *gpu_args], base_env, gpu_log)
    observer = hosts.start(ROBOT, [_python(), "-m", "cosmos_aloha.link_monitor", "--seconds", "1000", "--interface",
                                   hosts.interface[ROBOT], "--json", str(out / "observer.json")],
                           base_env if one_host else side_environment(base_env, hosts, ROBOT), out / "observer.log")
    probe = None
    if probe_images != "none":
        probe = hosts.start(GPU, [_python(), "-m", "cosmos_aloha.link_monitor", "--seconds", "1000", "--images",
                                  probe_images, "--json", str(out / "probe.json")],
                            side_environment(base_env, hosts, GPU), out / "probe.log")
    phases: dict = {}
    try:
        phases["ready_after_s"] = wait_for_line(robot_log, ready_line, ready_timeout_s, robot)
        phases["steady_ns"] = time.time_ns()
        time.sleep(steady_s)
        if outage_s > 0:
            phases["link_down_ns"] = hosts.set_link(False)
            time.sleep(outage_s)
            phases["link_up_ns"] = hosts.set_link(True)
            time.sleep(after_s)
        phases["after_ns"] = time.time_ns()
        if skew_offset_s is not None:
            phases["skew_ns"] = time.time_ns()
            skew = subprocess.run(hosts.command(GPU, [_python(), str(REPO / "tests" / "skewed_chunk_source.py"),
                                                      "--offset-s", str(skew_offset_s), "--seconds", "3"]),
                                  env=side_environment(base_env, hosts, GPU), capture_output=True, text=True,
                                  timeout=120)
            phases["skew_output"] = skew.stdout + skew.stderr[-2000:]
            time.sleep(3.0)
        phases["end_ns"] = time.time_ns()
    finally:
        for process in (probe, observer, gpu, robot):
            if process is not None:
                phases.setdefault("exit_codes", []).append(hosts.stop(process))
    import json

    (out / "phases.json").write_text(json.dumps(phases))
    result = {"phases": phases, "observer": json.loads((out / "observer.json").read_text()),
              "robot_log": robot_log.read_text(errors="replace"),
              "gpu_log": "" if one_host else gpu_log.read_text(errors="replace")}
    if probe is not None:
        result["probe"] = json.loads((out / "probe.json").read_text())
    return result


def _python() -> str:
    import sys

    return sys.executable


# -- reading an observed run ------------------------------------------------------------------------------
def link_bytes_per_s(observer: dict, start_ns: int, end_ns: int) -> float:
    """rx + tx bytes per second on the robot's veth end between two times (the observer's 10 Hz samples)."""
    samples = [s for s in observer["link"]["samples"] if start_ns <= s[0] <= end_ns]
    if len(samples) < 2:
        raise ValueError("fewer than two link samples in the window")
    (t0, rx0, tx0), (t1, rx1, tx1) = samples[0], samples[-1]
    return ((rx1 - rx0) + (tx1 - tx0)) / ((t1 - t0) / 1e9)


def chunk_latency_ms(observer: dict, start_ns: int, end_ns: int) -> list[float]:
    """Observation -> chunk received on the robot (both on the robot's clock) for chunks received in a window."""
    c = observer["chunks"]
    return [(r - s) / 1e6 for r, s in zip(c["receive_ns"], c["stamp_ns"]) if start_ns <= r <= end_ns]


def outage_report(observer: dict, down_ns: int, up_ns: int, max_step) -> dict:
    """What the executor did around the link outage, from the commands and chunks the observer saw."""
    import numpy as np

    t = np.asarray(observer["commands"]["receive_ns"], dtype=np.int64)
    q = np.asarray(observer["commands"]["positions"], dtype=float)
    steps = np.abs(np.diff(q, axis=0))
    ratio = (steps / np.asarray(max_step)[None, :]).max(axis=1)
    chunks = np.asarray(observer["chunks"]["receive_ns"], dtype=np.int64)
    stamps = np.asarray(observer["chunks"]["stamp_ns"], dtype=np.int64)
    after = chunks[chunks > up_ns]
    first_chunk_after_s = float((after[0] - up_ns) / 1e9) if after.size else None
    # A chunk held in a writer's queue during the outage arrives first; a fresh one is computed from an
    # observation made after the link came back.
    fresh = chunks[stamps > up_ns]
    first_fresh_chunk_after_s = float((fresh[0] - up_ns) / 1e9) if fresh.size else None
    # The hold: consecutive identical commands between the outage and the first chunk after it.
    window_end = after[0] + int(0.5e9) if after.size else t[-1]
    inside = (t[1:] >= down_ns) & (t[1:] <= window_end)
    still = np.all(steps == 0, axis=1) & inside
    longest, run = 0, 0
    for s in still:
        run = run + 1 if s else 0
        longest = max(longest, run)
    moving_after = bool(np.any(np.any(steps[t[1:] > window_end] > 0, axis=1))) if after.size else False
    # Motion resumes: the first command after the first new chunk that differs from the held one.
    resumed_s = None
    if after.size:
        later = np.nonzero((t[1:] > after[0]) & np.any(steps > 0, axis=1))[0]
        resumed_s = float((t[1:][later[0]] - up_ns) / 1e9) if later.size else None
    # Gaps between the executor's own stamps: its ticks, whenever this observer got the CPU to receive them.
    gaps = np.diff(np.sort(np.asarray(observer["commands"]["stamp_ns"], dtype=np.int64))) / 1e6
    return {"commands": int(t.size), "max_step_over_limit": float(ratio.max()) if ratio.size else None,
            "longest_hold_ticks": int(longest), "chunks_before": int((chunks < down_ns).sum()),
            "chunks_during": int(((chunks >= down_ns) & (chunks <= up_ns)).sum()), "chunks_after": int(after.size),
            "first_chunk_after_s": first_chunk_after_s, "first_fresh_chunk_after_s": first_fresh_chunk_after_s,
            "motion_resumed_after_s": resumed_s,
            "moving_after_recovery": moving_after, "command_gap_ms_max": float(gaps.max()) if gaps.size else None,
            "command_receive_gap_ms_max": float(np.diff(t).max() / 1e6) if t.size > 1 else None}
