"""Shared by the composed-graph tests: run `cosmos-aloha bringup` observed by `graph_monitor` in another process."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CLI = "import sys; from cosmos_policy_core.cli import main; sys.exit(main())"
# The observer: normal scheduling. Under SCHED_FIFO (`--rt-priority`) a monitor subscribed to every image did not
# exit within 90 s of a 40 s watch in a full run; its 250-deep command queue rides out its waits for a CPU.
MONITOR = [sys.executable, "-m", "cosmos_aloha.graph_monitor"]
SENSOR_TOPICS = ("cam_high/image_raw", "cam_left_wrist/image_raw", "cam_right_wrist/image_raw", "joint_states")


def spin_until(executor, seconds: float, until=None) -> bool:
    """Spin `executor` for up to `seconds`: True as soon as `until()` holds (without `until`, after `seconds`)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.01)
        if until is not None and until():
            return True
    return until is None


def run_monitored_bringup(env: dict, out_dir: Path, bringup_args: list[str], seconds: float,
                          skip: float) -> tuple[dict, str]:
    """Start the bringup for `seconds`, monitor it for `seconds - 3`; return (monitor summary, bringup log)."""
    out = out_dir / "monitor.json"
    bringup = subprocess.Popen(
        [sys.executable, "-c", CLI, "bringup", *bringup_args, "--seconds", f"{seconds:g}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    monitor = subprocess.run(
        [*MONITOR, "--seconds", f"{seconds - 3:g}", "--skip",
         f"{skip:g}", "--json", str(out)],
        env=env, timeout=seconds + 70,
    )
    log, _ = bringup.communicate(timeout=seconds + 70)
    assert monitor.returncode == 0
    assert bringup.returncode == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    return json.loads(out.read_text()), log


def assert_sensor_rates(topics: dict, log: str) -> None:
    """Sensors at 25 Hz ±5 %, unless they miss it because the sim itself was CPU-starved (then skip).

    The sim's tick (2 physics steps + rendering 3 cameras in software GL + publishing) must fit the 40 ms
    period; the sim logs its mean tick time, and says when it fell so far behind that it skipped ticks
    (its compute plus the waits for a CPU shared with the models), so a starved machine can be told apart
    from a graph fault. Above 80 % of the period, or with skipped ticks, the CPU is the limit.
    """
    ticks = [float(x) for x in re.findall(r"sim tick \(physics \+ render \+ publish\) mean ([0-9.]+) ms", log)]
    slow = {t: topics[t].get("rate_hz") for t in SENSOR_TOPICS
            if topics[t].get("rate_hz") != pytest.approx(25.0, rel=0.05)}
    skipped = "sim cannot keep" in log
    if slow and ((ticks and float(np.median(ticks)) > 32.0) or skipped):
        pytest.skip(f"CPU starved: sim tick means {ticks} ms for a 40 ms period"
                    f"{', ticks skipped' if skipped else ''}; sensor rates {slow}")
    assert not slow, (slow, ticks)
