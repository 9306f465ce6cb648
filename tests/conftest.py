"""Shared test fixtures: an isolated ROS 2 environment per test, markers for optional stacks, benchmark scripts."""
from __future__ import annotations

import importlib.util
import os
import random
import signal
import sys
from pathlib import Path

import pytest

HAS_RCLPY = importlib.util.find_spec("rclpy") is not None
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def pytest_configure(config):
    """A test run a script starts in the background (`make test &`, no job control) begins with SIGINT and SIGQUIT
    ignored, and every process it starts inherits that: a `ros2 launch` born so never hears the SIGINT that the
    stop tests send it. Give both back their defaults, as an interactive shell would; an exec'd child then starts
    with SIG_DFL."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def scheduling_unchanged():
    """No test may leave this process under another scheduling policy: every process a later test starts would
    inherit it (libsvtav1 run as root leaves SCHED_FIFO 99, which puts whole graphs above their executor's 40)."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    yield
    after = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    if after != before:
        os.sched_setscheduler(0, before[0], os.sched_param(before[1]))
        pytest.fail(f"this test changed the test process's scheduling (policy, priority) {before} -> {after}")


@pytest.fixture
def load_benchmark():
    """load_benchmark("name") imports benchmarks/name.py afresh (benchmarks are scripts, not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module   # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def ros_env() -> dict:
    """Environment for ROS 2 subprocesses: a private domain, localhost discovery, LARGE_DATA."""
    if not HAS_RCLPY:
        pytest.skip("rclpy (ros-rclpy wheels) not installed")
    from cosmos_aloha.graph import environment

    env = dict(os.environ)
    env.update(environment())  # the graph's own transport settings (LARGE_DATA, SHM profile, ...)
    env.update(
        ROS_DOMAIN_ID=str(random.randint(20, 200)),
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def ros_env_in_process(ros_env, monkeypatch) -> dict:
    """`ros_env` applied to the test process too: Fast DDS reads it when a participant is created here."""
    from cosmos_aloha.graph import environment

    for key in (*environment(), "RMW_IMPLEMENTATION"):
        monkeypatch.setenv(key, ros_env[key])
    return ros_env


def _signal_dispositions() -> dict[str, str]:
    """This process's blocked and ignored signal masks (hex), as the kernel reports them."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines) if k in ("SigBlk", "SigIgn")}


@pytest.fixture(autouse=True)
def signals_unchanged():
    """No test may change which signals this process blocks or ignores: every process a later test starts inherits
    both masks, and a `ros2 launch` born with SIGINT blocked or ignored never hears its stop."""
    before = _signal_dispositions()
    yield
    after = _signal_dispositions()
    if after != before:
        pytest.fail(f"this test changed the test process's signal masks {before} -> {after}")
