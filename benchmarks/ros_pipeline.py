"""ROS 2 pipeline across processes: three 480x640 rgb8 streams + joint states at 25 Hz -> rate, loss, latency,
and the executor node's period jitter with and without a CPU-heavy stand-in for the policy. Prints + JSON.
--policy-overhead instead runs the composed sim graph with the real policy node and splits each chunk's
observation -> chunk time into waiting for the observation set, the model, and publishing after it.

    .venv/bin/python benchmarks/ros_pipeline.py --seconds 60 --json /tmp/ros_pipeline.json
    .venv/bin/python benchmarks/ros_pipeline.py --qos-sweep --seconds 8     # which sensor QoS loses nothing
    .venv/bin/python benchmarks/ros_pipeline.py --policy-overhead          # 20 s of chunks, shipped model
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
RATE_HZ = 25.0
REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "models" / "aloha_sim_transfer_cube_small"
POLICY_TIMING_TOPIC = "policy/chunk_timing"   # the policy node's ~/chunk_timing (node name "policy")


# ------------------------------------------------------------------------------------------------
# roles (each runs in its own process)
# ------------------------------------------------------------------------------------------------
def _qos(reliability: str, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
    )


def frame(index: int, base: np.ndarray) -> np.ndarray:
    """The base pattern with the frame index in the first row (so a receiver can check content)."""
    image = base.copy()
    image[0, :, 0] = index % 251
    image[0, :, 1] = (index // 251) % 251
    return image


def base_pattern(height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 1] = np.arange(width, dtype=np.uint16)[None, :] % 256
    image[..., 2] = np.arange(height, dtype=np.uint16)[:, None] % 256
    return image


def role_pub(args) -> int:
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState

    from cosmos_aloha import topics
    from cosmos_aloha.conversions import image_to_msg, joints_to_msg

    rclpy.init()
    node = Node("bench_pub")
    qos = _qos(args.reliability, args.depth)
    pubs = {c: node.create_publisher(Image, topics.image(c).name, qos) for c in CAMERAS}
    joint_pub = node.create_publisher(JointState, topics.JOINT_STATES.name, qos)
    base = base_pattern(args.height, args.width)
    home = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
    state = {"index": 0, "fill_ms": []}

    def tick() -> None:
        i = state["index"]
        for cam, pub in pubs.items():
            t0 = time.perf_counter()
            msg = image_to_msg(frame(i, base), node.get_clock().now().nanoseconds, frame_id=str(i))
            state["fill_ms"].append((time.perf_counter() - t0) * 1e3)
            pub.publish(msg)
        joint_pub.publish(joints_to_msg(home, node.get_clock().now().nanoseconds))
        state["index"] += 1

    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    # Start the clock only once every image subscriber is matched, so loss counts the steady state.
    end = time.monotonic() + 20
    while time.monotonic() < end and min(p.get_subscription_count() for p in pubs.values()) < args.subscribers:
        executor.spin_once(timeout_sec=0.05)
    time.sleep(0.5)
    node.create_timer(1.0 / RATE_HZ, tick)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    Path(args.out).write_text(json.dumps({"published": state["index"],
                                          "fill_ms_p50": float(np.median(state["fill_ms"]))}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def spin_until_signal(node, done=lambda: False) -> None:
    """Spin `node` until SIGINT / SIGTERM or `done()`; a shutdown from outside ends it quietly."""
    import rclpy

    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    stop = {"flag": False}
    signal.signal(signal.SIGINT, lambda *a: stop.update(flag=True))
    signal.signal(signal.SIGTERM, lambda *a: stop.update(flag=True))
    try:
        while not stop["flag"] and not done():
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    executor.remove_node(node)


def role_sub(args) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState

    from cosmos_aloha import topics
    from cosmos_aloha.conversions import msg_to_image, stamp_to_ns

    rclpy.init()
    node = Node("bench_sub")
    qos = _qos(args.reliability, args.depth)
    base = base_pattern(args.height, args.width)
    received = {c: [] for c in CAMERAS}   # (index, latency_ms, ok)
    joints: list[float] = []
    jitter: list[dict] = []

    def on_image(cam: str):
        def callback(msg: Image) -> None:
            latency = (node.get_clock().now().nanoseconds - stamp_to_ns(msg.header.stamp)) / 1e6
            index = int(msg.header.frame_id)
            image = msg_to_image(msg)
            if args.verify == "heavy":  # regenerate the expected frame and compare every byte
                ok = bool(np.array_equal(image, frame(index, base)))
            else:                       # what a policy does: view the buffer, check size and a row
                ok = image.shape == base.shape and int(image[0, 0, 0]) == index % 251
            received[cam].append((index, latency, ok))
        return callback

    for cam in CAMERAS:
        node.create_subscription(Image, topics.image(cam).name, on_image(cam), qos)
    node.create_subscription(
        JointState, topics.JOINT_STATES.name,
        lambda m: joints.append((node.get_clock().now().nanoseconds - stamp_to_ns(m.header.stamp)) / 1e6), qos)

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "cosmos_aloha/executor":
                jitter.append({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS.name, on_diag, 10)
    spin_until_signal(node)  # the summary below is what the orchestrator waits for
    summary = {"images": {}, "joint_states": len(joints), "executor_diagnostics": jitter}
    for cam, rows in received.items():
        lat = np.array([r[1] for r in rows]) if rows else np.zeros(1)
        indices = sorted(r[0] for r in rows)
        summary["images"][cam] = {
            "received": len(rows), "first_index": indices[0] if indices else None,
            "last_index": indices[-1] if indices else None, "content_ok": all(r[2] for r in rows),
            "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
        }
    if joints:
        summary["joint_latency_ms_p99"] = float(np.percentile(joints, 99))
    Path(args.out).write_text(json.dumps(summary))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def role_chunks(args) -> int:
    """Records every action chunk (receive time) and the policy's timing message for it, matched by stamp.

    Runs at the executor's SCHED_FIFO priority (`--rt`) so its receive time is the executor's, not that of a
    process starved by the model. Stops `--seconds` after the first chunk (or on SIGINT), then writes the rows.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from trajectory_msgs.msg import JointTrajectory

    from cosmos_aloha.conversions import stamp_to_ns
    from cosmos_aloha.topics import ACTION_CHUNK
    from cosmos_aloha.node_runtime import apply_realtime_priority
    from cosmos_aloha.qos import COMMAND_QOS

    rclpy.init()
    node = Node("bench_chunks")
    realtime = apply_realtime_priority(node, args.rt)
    received: dict[int, int] = {}        # observation stamp -> chunk receive ns
    timings: dict[int, dict] = {}        # observation stamp -> the policy's breakdown (ms)
    first = {"ns": None}

    def on_chunk(msg: JointTrajectory) -> None:
        now = node.get_clock().now().nanoseconds
        received[stamp_to_ns(msg.header.stamp)] = now
        first["ns"] = first["ns"] or now

    def on_timing(msg: DiagnosticArray) -> None:
        for status in msg.status:
            timings[stamp_to_ns(msg.header.stamp)] = {kv.key: float(kv.value) for kv in status.values}

    node.create_subscription(JointTrajectory, ACTION_CHUNK.name, on_chunk, COMMAND_QOS)
    node.create_subscription(DiagnosticArray, POLICY_TIMING_TOPIC, on_timing, COMMAND_QOS)
    spin_until_signal(node, lambda: bool(first["ns"]) and
                      node.get_clock().now().nanoseconds - first["ns"] > args.seconds * 1e9)
    end = time.monotonic() + 0.5   # the timing message follows its chunk
    spin_until_signal(node, lambda: time.monotonic() > end)
    rows = [{"stamp_ns": stamp, "received_ns": recv, **timings.get(stamp, {})} for stamp, recv in sorted(received.items())]
    Path(args.out).write_text(json.dumps({"chunks": rows, "timing_messages": len(timings), "realtime": realtime}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def role_hog(args) -> int:
    """Stand-in for the policy's compute: back-to-back float32 matmuls on `threads` threads."""
    import torch

    torch.set_num_threads(args.threads)
    a = torch.randn(512, 512)
    b = torch.randn(512, 512)
    end = time.monotonic() + args.seconds
    n = 0
    try:
        while time.monotonic() < end:
            a = torch.tanh(a @ b)
            n += 1
    except KeyboardInterrupt:  # stopped by the orchestrator at the end of the phase
        pass
    print(json.dumps({"matmuls": n}))
    return 0


# ------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------
def _env(domain: int, profile: bool) -> dict:
    """The graph's environment (cosmos_aloha.graph.environment(): LARGE_DATA, localhost, Fast DDS profile)."""
    from cosmos_aloha import graph

    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp")
    for key, value in graph.environment().items():
        env.setdefault(key, value)
    if not profile:
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    return env


def run_phase(seconds: float, reliability: str, depth: int, verify: str, hog_threads: int,
              with_executor: bool, height: int, width: int, transports: str | None = None,
              executor_rt: int = 0, profile: bool = True) -> dict:
    env = _env(random.randint(30, 200), profile)
    if transports:
        env["FASTDDS_BUILTIN_TRANSPORTS"] = transports
    tmp = Path(tempfile.mkdtemp(prefix="ros_pipeline_"))
    common = ["--reliability", reliability, "--depth", str(depth), "--height", str(height), "--width", str(width)]
    me = [sys.executable, __file__]
    procs = []
    sub = subprocess.Popen(me + ["--role", "sub", "--out", str(tmp / "sub.json"), "--verify", verify] + common, env=env)
    if with_executor:
        # The real executor node (its own LoopStats measures the timer) fed by the replay chunk source.
        for module in ("cosmos_aloha.executor_node", "cosmos_aloha.replay_chunk_node"):
            params = ["-p", f"rt_priority:={executor_rt}"] if module.endswith("executor_node") else []
            procs.append(subprocess.Popen([sys.executable, "-m", module, "--ros-args", "--log-level", "warn", *params],
                                          env=env, stdout=subprocess.DEVNULL))
    hog = None
    if hog_threads:
        hog = subprocess.Popen(me + ["--role", "hog", "--threads", str(hog_threads), "--seconds", str(seconds + 25)],
                               env=env, stdout=subprocess.PIPE, text=True)
    pub = subprocess.run(me + ["--role", "pub", "--out", str(tmp / "pub.json"), "--seconds", str(seconds),
                               "--subscribers", "1"] + common, env=env, timeout=seconds + 120)
    time.sleep(1.0)  # let the last messages arrive
    sub.send_signal(signal.SIGINT)
    sub.wait(timeout=30)
    for proc in procs + ([hog] if hog else []):
        proc.send_signal(signal.SIGINT)
    for proc in procs + ([hog] if hog else []):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    if pub.returncode != 0:
        raise RuntimeError("publisher failed")
    if not (tmp / "sub.json").exists():
        raise RuntimeError(f"the subscriber process wrote no summary (exit code {sub.returncode})")
    published = json.loads((tmp / "pub.json").read_text())
    got = json.loads((tmp / "sub.json").read_text())
    n = published["published"]
    images = got["images"]
    result = {
        "qos": f"{reliability}/depth{depth}", "verify": verify, "hog_threads": hog_threads,
        "executor_rt_priority": executor_rt,
        "transports": env["FASTDDS_BUILTIN_TRANSPORTS"], "seconds": seconds,
        "fastdds_profile": env.get("FASTDDS_DEFAULT_PROFILES_FILE"), "published_per_stream": n,
        "image_fill_ms_p50": published["fill_ms_p50"],
        "delivered_rate_hz": float(np.mean([images[c]["received"] for c in CAMERAS]) / seconds),
        "loss": float(1.0 - sum(images[c]["received"] for c in CAMERAS) / (3 * n)) if n else None,
        # after the first delivered frame: separates steady-state loss from connection set-up
        "loss_after_first": float(1.0 - sum(images[c]["received"] for c in CAMERAS)
                                  / sum(n - images[c]["first_index"] for c in CAMERAS))
        if n and all(images[c]["first_index"] is not None for c in CAMERAS) else None,
        "first_index": [images[c]["first_index"] for c in CAMERAS],
        "content_ok": all(images[c]["content_ok"] for c in CAMERAS),
        "image_latency_ms_p50": float(np.median([images[c]["latency_ms_p50"] for c in CAMERAS])),
        "image_latency_ms_p99": float(max(images[c]["latency_ms_p99"] for c in CAMERAS)),
        "joint_states_received": got["joint_states"],
        "joint_latency_ms_p99": got.get("joint_latency_ms_p99"),
    }
    diags = [d for d in got["executor_diagnostics"] if "jitter_ms_p99" in d]
    if with_executor and diags:
        # LoopStats keeps the last 250 ticks (10 s); skip the first report (start-up), take the worst.
        steady = diags[1:] or diags
        result["executor_rate_hz"] = float(np.median([float(d["rate_hz"]) for d in steady]))
        result["executor_jitter_ms_p99"] = float(max(float(d["jitter_ms_p99"]) for d in steady))
        result["executor_late_ms_max"] = float(max(float(d["late_ms_max"]) for d in steady))
        result["executor_states"] = sorted({d.get("state") for d in steady[:-1] or steady})
    return result


def _percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p90": None, "p99": None, "n": 0}
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "n": int(v.size)}


# Per chunk, ms. The first three add up to the total: the overhead beyond the model is wait + handoff + publish.
OVERHEAD_COLUMNS = (
    ("total", "observation stamp -> chunk received"),
    ("wait", "observation age at inference start (sensor transport + waiting for the set)"),
    ("handoff", "picked up -> model starts (observation assembly, worker wake-up)"),
    ("model", "the model call (encode + denoise + actions), wall clock in the node"),
    ("publish", "model done -> chunk received here (message build + publish + DDS)"),
    ("publish_call", "model done -> publish() returned, in the node"),
    ("overhead", "total - model"),
)


def overhead_rows(chunks: list[dict]) -> list[dict]:
    """Per chunk with the policy's timing message: the split of observation -> chunk received (ms)."""
    rows = []
    for c in chunks:
        if "model_ms" not in c:
            continue
        total = (c["received_ns"] - c["stamp_ns"]) / 1e6
        model_done = c["wait_ms"] + c["handoff_ms"] + c["model_ms"]
        rows.append({"total": total, "wait": c["wait_ms"], "handoff": c["handoff_ms"], "model": c["model_ms"],
                     "publish": total - model_done, "publish_call": c["publish_ms"], "overhead": total - c["model_ms"],
                     **{k[:-3]: v for k, v in c.items() if k.endswith("_ms") and k[:-3] not in
                        ("wait", "handoff", "model", "publish", "skew")}})
    return rows


def run_policy_overhead(seconds: float, checkpoint: Path, height: int, width: int, start_timeout: float,
                        log_path: Path, observer_rt: int, future_images: bool) -> dict:
    """The composed sim graph (sim + policy + executor, as `cosmos-aloha demo`), chunks observed for `seconds`."""
    import dataclasses
    import re

    from cosmos_aloha import graph
    from cosmos_policy_core.cli.bringup import Bringup

    env = _env(random.randint(30, 200), True)
    tmp = Path(tempfile.mkdtemp(prefix="ros_pipeline_policy_"))
    plan = graph.plan({"sim": "true", "checkpoint": str(checkpoint), "replay": "false",
                       "image_height": str(height), "image_width": str(width)})
    if "policy" not in plan.names:
        raise RuntimeError(f"the graph plan has no policy node: {plan.names}, skipped {plan.skipped}")
    if not future_images:  # the predicted-frame decode runs right after each chunk, competing for the CPUs
        plan = dataclasses.replace(plan, nodes=tuple(
            dataclasses.replace(n, parameters={**n.parameters, "return_future_images": False})
            if n.name == "policy" else n for n in plan.nodes))
    sub = subprocess.Popen([sys.executable, __file__, "--role", "chunks", "--out", str(tmp / "chunks.json"),
                            "--seconds", str(seconds), "--rt", str(observer_rt)], env=env)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        bringup = Bringup(plan, env=env, out=log)
        try:
            bringup.start()
            deadline = t0 + start_timeout + seconds
            while sub.poll() is None and time.monotonic() < deadline:
                if any(n.process.poll() is not None for n in bringup.nodes):
                    break
                time.sleep(0.2)
        finally:
            if sub.poll() is None:
                sub.send_signal(signal.SIGINT)
            codes = bringup.stop()
    sub.wait(timeout=30)
    text = log_path.read_text()
    if not (tmp / "chunks.json").exists():
        raise RuntimeError(f"the chunk observer wrote nothing (exit {sub.returncode}); node exit codes {codes}, "
                           f"log {log_path}")
    got = json.loads((tmp / "chunks.json").read_text())
    rows = overhead_rows(got["chunks"])
    sim_ticks = [float(x) for x in re.findall(r"sim tick \(physics \+ render \+ publish\) mean ([0-9.]+) ms", text)]
    device = re.search(r"\(\w+ on (\S+), \d+px", text)
    stages = sorted({k for r in rows for k in r} - {c for c, _ in OVERHEAD_COLUMNS})
    return {
        "phase": "policy_overhead", "checkpoint": str(checkpoint), "image": [height, width],
        "device": device.group(1) if device else None, "seconds_of_chunks": seconds,
        "future_images": future_images, "observer_sched_fifo": observer_rt if got["realtime"] else 0,
        "wall_s": time.monotonic() - t0, "node_exit_codes": codes,
        "chunks_received": len(got["chunks"]), "chunks_with_timing": len(rows),
        "timing_messages": got["timing_messages"],
        "sim_tick_ms_mean": sim_ticks,
        "ms": {c: _percentiles([r[c] for r in rows]) for c, _ in OVERHEAD_COLUMNS},
        "model_stages_ms": {k: _percentiles([r[k] for r in rows if k in r]) for k in stages},
        "per_chunk_ms": rows,
        "log": str(log_path),
    }


def _print_overhead(result: dict) -> None:
    print(f"policy node, {result['checkpoint']} on {result['device']}, sim {result['image'][0]}x{result['image'][1]}: "
          f"{result['chunks_received']} chunks in {result['seconds_of_chunks']:g} s, "
          f"{result['chunks_with_timing']} with the node's timing; predicted frames "
          f"{'on' if result['future_images'] else 'off'}; observer SCHED_FIFO {result['observer_sched_fifo']}; "
          f"sim tick means {result['sim_tick_ms_mean']} ms")
    print(f"  {'ms per chunk':<14s} {'p50':>7s} {'p90':>7s} {'p99':>7s}")

    def row(name: str, q: dict, note: str = "") -> None:
        cells = " ".join("    n/a" if q[k] is None else f"{q[k]:7.1f}" for k in ("p50", "p90", "p99"))
        print(f"  {name:<14s} {cells}  {note}")

    for name, note in OVERHEAD_COLUMNS:
        row(name, result["ms"][name], note)
    for name, q in result["model_stages_ms"].items():
        row(f"  {name}", q, "model stage")
    print(f"  node exit codes {result['node_exit_codes']}; node logs {result['log']}", flush=True)


def _print(result: dict) -> None:
    tag = result["transports"] + ("+profile" if result.get("fastdds_profile") else "")
    line = (f"[{tag}] {result['qos']:>18s} rt={result.get('executor_rt_priority', 0)} verify={result['verify']:<5s} hog={result['hog_threads']} "
            f"rate {result['delivered_rate_hz']:5.2f} Hz  loss {100 * result['loss']:5.2f} % "
            f"(after first {100 * (result['loss_after_first'] or 0):5.2f} %)  "
            f"latency p50 {result['image_latency_ms_p50']:5.1f} p99 {result['image_latency_ms_p99']:6.1f} ms")
    if "executor_jitter_ms_p99" in result:
        line += (f"  executor {result['executor_rate_hz']:.2f} Hz jitter p99 {result['executor_jitter_ms_p99']:.2f} ms"
                 f" worst late {result['executor_late_ms_max']:.1f} ms")
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["pub", "sub", "hog", "chunks"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=None,
                        help="per phase (default 60; --policy-overhead: 20 s of chunks)")
    parser.add_argument("--reliability", choices=["best_effort", "reliable"], default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--verify", choices=["light", "heavy"], default="light")
    parser.add_argument("--height", type=int, default=None, help="default 480 (--policy-overhead: 224, the demo's)")
    parser.add_argument("--width", type=int, default=None, help="default 640 (--policy-overhead: 224)")
    parser.add_argument("--hog-threads", type=int, default=2, help="threads of the CPU-heavy policy stand-in")
    parser.add_argument("--executor-rt", type=int, default=40,
                        help="executor node's SCHED_FIFO priority (its rt_priority parameter; 0 = normal)")
    parser.add_argument("--transports", default=None,
                        help="FASTDDS_BUILTIN_TRANSPORTS for all processes (default: the environment's, else LARGE_DATA)")
    parser.add_argument("--no-profile", action="store_true",
                        help="without the graph's Fast DDS profile (config/fastdds.xml), to see what it fixes")
    parser.add_argument("--qos-sweep", action="store_true", help="reliability x depth x verification matrix")
    parser.add_argument("--sweep-depths", default="1,2,5,10")
    parser.add_argument("--sweep-reliability", default="best_effort,reliable")
    parser.add_argument("--sweep-verify", default="light,heavy")
    parser.add_argument("--policy-overhead", action="store_true",
                        help="composed sim graph with the policy node: observation -> chunk split per chunk")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_MODEL, help="--policy-overhead: policy checkpoint")
    parser.add_argument("--rt", type=int, default=40,
                        help="--policy-overhead: the chunk observer's SCHED_FIFO priority (the executor's; 0 = normal)")
    parser.add_argument("--no-future-images", action="store_true",
                        help="--policy-overhead: policy parameter return_future_images:=false (no decode after the chunk)")
    parser.add_argument("--start-timeout", type=float, default=180.0,
                        help="--policy-overhead: seconds allowed for model load + warm-up before the first chunk")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args(argv)
    if args.role:
        return {"pub": role_pub, "sub": role_sub, "hog": role_hog, "chunks": role_chunks}[args.role](args)

    header = {"machine": platform.node(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    if args.policy_overhead:
        seconds = args.seconds or 20.0
        # The policy sees 224x224, what `cosmos-aloha demo` renders (480x640 in software GL starves 2 cores).
        height, width = args.height or 224, args.width or 224
        print(f"observation -> chunk overhead of the policy node, {seconds:g} s of chunks, {os.cpu_count()} CPUs, "
              f"load {header['loadavg_start'][0]:.2f}", flush=True)
        log_path = Path(tempfile.mkdtemp(prefix="ros_pipeline_policy_log_")) / "nodes.log"
        result = run_policy_overhead(seconds, args.checkpoint, height, width, args.start_timeout, log_path,
                                     args.rt, not args.no_future_images)
        header["loadavg_end"] = os.getloadavg()
        _print_overhead(result)
        print(f"  load average start {header['loadavg_start'][0]:.2f}, end {header['loadavg_end'][0]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({**header, "results": [result]}, indent=1))
        return 0 if result["chunks_with_timing"] else 1
    args.seconds = args.seconds or 60.0
    args.height, args.width = args.height or 480, args.width or 640

    print(f"ROS 2 pipeline, {args.height}x{args.width} rgb8 x3 + joint states at 25 Hz, {args.seconds:g} s per run, "
          f"{os.cpu_count()} CPUs, load {header['loadavg_start'][0]:.1f}", flush=True)
    results = []
    if args.qos_sweep:
        for verify in args.sweep_verify.split(","):
            for reliability in args.sweep_reliability.split(","):
                for depth in (int(d) for d in args.sweep_depths.split(",")):
                    r = run_phase(args.seconds, reliability, depth, verify, 0, False, args.height, args.width,
                                  transports=args.transports, profile=not args.no_profile)
                    _print(r)
                    results.append(r)
    else:
        from cosmos_aloha import qos as graph_qos

        reliability = args.reliability or ("reliable" if graph_qos.SENSOR_QOS.reliability.name == "RELIABLE"
                                           else "best_effort")
        depth = args.depth or graph_qos.SENSOR_QOS.depth
        for hog in (0, args.hog_threads):
            r = run_phase(args.seconds, reliability, depth, args.verify, hog, True, args.height, args.width,
                          transports=args.transports, executor_rt=args.executor_rt, profile=not args.no_profile)
            _print(r)
            results.append(r)
    header["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
