"""The real `ros2 launch cosmos_aloha bringup.launch.py`: built with colcon, observed from other processes, stopped
both ways a user does (Ctrl-C to the process group; SIGINT to the launch process alone, as `kill` or systemd).

`ros2` comes from a ROS 2 distribution, the environment, or ../shared/ros2-cli (installed here when missing).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cosmos_aloha import graph
from graph_run import MONITOR, assert_sensor_rates

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ros2_ws" / "src" / "cosmos_aloha"
ROS2_CLI = ROOT.parent / "shared" / "ros2-cli"
SHIPPED = ROOT / "models" / "aloha_sim_transfer_cube_small"
# No `ros2 daemon` left behind; discovery of a busy graph from a fresh process takes a few seconds.
DIRECT = ("--no-daemon", "--spin-time", "10")
# A busy process: computes for 20 ms, then sleeps 1 ms (about 95 % of a CPU).
BUSY = "import time\nwhile True:\n    end = time.perf_counter() + 0.02\n    while time.perf_counter() < end: pass\n" \
       "    time.sleep(0.001)"


def _ros2() -> str | None:
    here = Path(sys.executable).parent / "ros2"
    return str(here) if here.exists() else shutil.which("ros2")


@pytest.fixture(scope="module")
def ros2() -> str:
    found = _ros2()
    if found is None and (ROS2_CLI / "install.sh").exists():
        subprocess.run(["bash", str(ROS2_CLI / "install.sh"), sys.executable], check=True, timeout=600)
        found = _ros2()
    if found is None:
        pytest.skip(f"no `ros2` command: source a ROS 2 distribution, or put the ROS 2 CLI wheels at {ROS2_CLI} "
                    "(its install.sh adds `ros2` to this environment)")
    return found


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    """The package built by colcon into a fresh workspace: what `ros2 launch` finds through the ament index."""
    colcon = Path(sys.executable).parent / "colcon"
    colcon = str(colcon) if colcon.exists() else shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon not installed (dev extra)")
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(PACKAGE, ws / "src" / "cosmos_aloha", symlinks=False)
    result = subprocess.run([colcon, "build", "--packages-select", "cosmos_aloha"], cwd=ws, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return ws / "install" / "cosmos_aloha"


def launch_env(ros_env: dict, install: Path) -> dict:
    env = dict(ros_env)
    site = next((install / "lib").glob("python3*/site-packages"))
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(filter(None, [str(install), env.get("AMENT_PREFIX_PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)   # the launch file sets the installed package's
    return env


class Launch:
    """`ros2 launch` in its own process group, its output collected line by line."""

    def __init__(self, ros2: str, env: dict, *arguments: str):
        # stdin is not a terminal (as under systemd or CI): launch forwards a SIGINT it gets to the nodes.
        self.proc = subprocess.Popen([ros2, "launch", "cosmos_aloha", "bringup.launch.py", *arguments], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, cwd=ROOT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                        daemon=True)
        self._reader.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and self.proc.poll() is None:
            if re.search(pattern, self.text):
                return True
            time.sleep(0.2)
        return bool(re.search(pattern, self.text))

    def stop(self, group: bool) -> float:
        """SIGINT to the whole process group (Ctrl-C) or the launch process alone; seconds until it exited."""
        start = time.monotonic()
        if group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=graph.STOP_GRACE_S + graph.STOP_KILL_S + 20)
        except subprocess.TimeoutExpired:
            time.sleep(1.0)
            raise AssertionError(f"ros2 launch still running {time.monotonic() - start:.0f} s after SIGINT; its "
                                 f"output:\n{self.text[-6000:]}\nprocesses:\n{_process_tree(self.proc.pid)}") from None
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._reader.join(timeout=10)
        return time.monotonic() - start


def _process_tree(pid: int) -> str:
    """`ps` lines of the launch's process group: which node was still alive, and in which state."""
    out = subprocess.run(["ps", "-o", "pid,stat,cls,rtprio,etime,args", "-s", str(pid)],
                         capture_output=True, text=True)
    try:
        masks = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Sig")]
    except OSError:
        masks = []
    return out.stdout[-3000:] + "\nros2 launch " + " ".join(masks)


def assert_clean_stop(launch: Launch, nodes: list[str], seconds: float, killed: tuple[int, ...] = ()) -> None:
    text = launch.text
    assert launch.proc.returncode == 0, text[-4000:]
    for node in nodes:
        assert re.search(rf"\[INFO\] \[{node}-\d+\]: process has finished cleanly", text), (node, text[-4000:])
    died = [int(pid) for pid in re.findall(r"process has died \[pid (\d+)", text)]
    assert set(died) <= set(killed) and "failed to terminate" not in text, text[-4000:]
    assert "Traceback" not in text and "terminate called" not in text, text[-6000:]
    assert seconds < graph.STOP_GRACE_S, f"stopping took {seconds:.1f} s, launch's grace period is {graph.STOP_GRACE_S}"


def cli(ros2: str, env: dict, *args: str, timeout: float = 60.0, attempts: int = 3) -> subprocess.CompletedProcess:
    """`ros2 ARGS`, asked again while the node is not found: on a loaded machine discovering every node can take
    longer than the command's --spin-time."""
    for _ in range(attempts):
        done = subprocess.run([ros2, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if "Node not found" not in done.stderr:
            break
    return done


def topic_hz(ros2: str, env: dict, topic: str, seconds: float = 8.0) -> list[float]:
    """The rates `ros2 topic hz` prints for `seconds` (it runs until interrupted)."""
    proc = subprocess.Popen([ros2, "topic", "hz", topic, "--window", "25"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    time.sleep(seconds)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    return [float(x) for x in re.findall(r"average rate: ([0-9.]+)", out)]


def test_ros2_launch_runs_the_graph_with_planner_and_stops_on_ctrl_c(ros2, install, ros_env, tmp_path):
    """The shipped checkpoint with the planner, 224x224 sim cameras (the policy's input size: software GL on a
    shared 2-core machine cannot render three 480x640 cameras at 25 Hz next to the models)."""
    env = launch_env(ros_env, install)
    launch = Launch(ros2, env, f"checkpoint:={SHIPPED.relative_to(ROOT)}", "planner:=true",
                    "image_height:=224", "image_width:=224")
    stopped = False
    try:
        # The manager brings the nodes up in order; the policy's load and warm-up take a while on a CPU.
        assert launch.wait_for(r"\[lifecycle_manager-\d+\].*policy: activated", 300), launch.text[-4000:]
        assert launch.wait_for(r"\[policy-\d+\].*chunk \d+: observation -> chunk", 120), launch.text[-4000:]
        assert launch.wait_for(r"\[lifecycle_manager-\d+\].*planner: up", 60), launch.text[-4000:]

        # The ROS 2 command line against our nodes.
        state = cli(ros2, env, "lifecycle", "get", "/policy", *DIRECT)
        assert state.stdout.startswith("active"), state.stdout + state.stderr
        value = cli(ros2, env, "param", "get", "/aloha_sim", "publish_hz", *DIRECT)
        assert "Double value is: 25.0" in value.stdout, value.stdout + value.stderr
        described = cli(ros2, env, "param", "describe", "/executor", "blend_steps", *DIRECT)
        assert "chunk switch" in described.stdout, described.stdout + described.stderr   # declared once, described
        hz = topic_hz(ros2, env, "/joint_states")
        assert hz and hz[-1] > 0, hz                       # the rate itself is checked below, with the sim's

        # A separate process observes the graph.
        out = tmp_path / "monitor.json"
        subprocess.run([*MONITOR, "--seconds", "40", "--skip", "2",
                        "--json", str(out)], env=env, timeout=90, check=True)
        summary = json.loads(out.read_text())
        topics = summary["topics"]
        assert topics["cam_high/image_raw"]["shapes"] == [[224, 224]]
        assert topics["cosmos/action_chunk"]["count"] >= 3, topics["cosmos/action_chunk"]
        predicted = [topics[f"cosmos/predicted/{c}"]["count"] for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")]
        assert min(predicted) >= 1, predicted
        # The planner reports (its warm-up plan may still run on a CPU: then it says "configuring").
        planner = summary["diagnostics"].get("cosmos_aloha/planner")
        assert planner is not None and planner["values"]["lifecycle_state"], summary["diagnostics"].keys()
        manager = summary["diagnostics"]["cosmos_aloha/lifecycle_manager"]["values"]
        assert manager["aloha_sim"].startswith("active") and manager["policy"].startswith("active"), manager

        seconds = launch.stop(group=True)   # Ctrl-C, while the policy and the planner compute
        stopped = True
    finally:
        if not stopped:
            launch.stop(group=True)
    assert_clean_stop(launch, ["aloha_sim", "policy", "planner", "executor", "lifecycle_manager"], seconds)
    print(f"Ctrl-C (SIGINT to the process group): every node exited 0, launch done in {seconds:.1f} s; "
          f"`ros2 topic hz /joint_states`: {hz}")
    assert_sensor_rates(topics, launch.text)   # 25 Hz, unless the sim's own tick shows a starved CPU (skips)


def test_a_killed_policy_respawns_and_sigint_to_launch_alone_stops_every_node_on_a_busy_cpu(
        ros2, install, ros_env, tmp_path):
    """First the policy is killed (-9): launch restarts it after the back-off and the lifecycle manager brings
    it back. Then `kill -INT <launch pid>` with two busy processes besides: launch forwards the SIGINT; the
    policy, in the middle of a model call, ends within the grace period and exits 0 (no abort, no traceback).

    The busy processes start once every node runs and give the CPU up for 1 ms in every 20: on some virtual
    machines two processes that never give it up starve every other runnable process for minutes."""
    from cosmos_policy_core.testing import build_random_checkpoint

    ckpt = build_random_checkpoint(tmp_path / "ckpt", image_size=64, tasks=("transfer the cube",))
    env = launch_env(ros_env, install)
    launch = Launch(ros2, env, f"checkpoint:={ckpt}", "image_height:=96", "image_width:=128",
                    "predicted_images:=false", "temporal_ensemble:=true")
    hogs: list[subprocess.Popen] = []
    stopped = False
    try:
        assert launch.wait_for(r"\[policy-\d+\].*chunk 3: observation -> chunk", 300), launch.text[-4000:]
        first = int(re.search(r"\[policy-\d+\]: process started with pid \[(\d+)\]", launch.text).group(1))
        os.kill(first, signal.SIGKILL)
        assert launch.wait_for(r"cosmos_aloha: policy exited \(code -9\); restarting it in \d+ s", 60), launch.text[-4000:]
        assert launch.wait_for(rf"policy: restarted \(pid {first} -> \d+", 240), launch.text[-4000:]
        assert launch.wait_for(r"\[policy-\d+\].*policy\]: chunk 1: observation -> chunk", 240), launch.text[-4000:]
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
        assert launch.wait_for(r"\[policy-\d+\].*policy\]: chunk 3: observation -> chunk", 120), launch.text[-4000:]
        seconds = launch.stop(group=False)
        stopped = True
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        if not stopped:
            launch.stop(group=True)
    assert_clean_stop(launch, ["aloha_sim", "policy", "executor", "lifecycle_manager"], seconds, killed=(first,))
    print(f"SIGINT to the launch process alone, 2 busy processes besides: every node exited 0, launch done in "
          f"{seconds:.1f} s")


def test_a_bad_launch_argument_stops_ros2_launch_before_any_node_starts(ros2, install, ros_env):
    env = launch_env(ros_env, install)
    for argument, words in (("namespace:=left-cell", "namespace:='left-cell'"),
                            ("checkpoint:=models/no_such_model", "checkpoint:='models/no_such_model'"),
                            ("engine:=tensorflow", "engine:='tensorflow'")):
        out = subprocess.run([ros2, "launch", "cosmos_aloha", "bringup.launch.py", argument], env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=ROOT)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and words in text, text[-3000:]
        assert "process started" not in text, text[-3000:]
