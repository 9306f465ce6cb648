"""The graph split over two hosts, emulated by two network namespaces on this machine (needs root): raw vs JPEG.

    sudo MUJOCO_GL=egl python benchmarks/two_hosts.py --out benchmarks/results/two_hosts.json

1. Link runs (sim 480x640, replayed chunks on the GPU side, an image probe there taking the images raw or
   compressed): image latency across the link, bytes/s on the veth, recovery after a 2 s link outage.
2. Policy runs (the shipped policy on the GPU side with the demo's settings: 224x224 sim, predicted frames off,
   1 denoising step):
   observation -> chunk latency on the robot, bytes/s, sim success of the scene, per seed, raw and compressed.
Both namespaces share the machine's clock, so latencies across the link are exact. Uses tests/two_hosts.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "models" / "aloha_sim_transfer_cube_small"
THREADS: dict[str, str] = {}   # --torch-threads: OMP_NUM_THREADS for every process of the runs


def _harness():
    sys.path.insert(0, str(REPO / "tests"))
    spec = importlib.util.spec_from_file_location("two_hosts", REPO / "tests" / "two_hosts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict:
    from cosmos_aloha.graph import environment

    return {**os.environ, **environment(), **THREADS, "ROS_DOMAIN_ID": str(random.randint(20, 200)),
            "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "PYTHONUNBUFFERED": "1",
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def _pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _max_step() -> np.ndarray:
    from cosmos_policy_core.runtime.execution import SafetyConfig

    safety = SafetyConfig.aloha_vx300s()
    return np.asarray(safety.max_velocity) / safety.control_hz


def link_run(h, transport: str, work: Path) -> dict:
    with h.TwoHosts() as hosts:
        run = h.run_split_graph(hosts, work, _env(), robot_args=["--temporal-ensemble", "false"],
                                gpu_args=["--arg", "replay:=true"], probe_images=transport,
                                steady_s=10.0, outage_s=2.0, after_s=8.0)
    ph, obs, probe = run["phases"], run["observer"], run["probe"]
    window = (ph["steady_ns"], ph["link_down_ns"])
    latency = []
    for cam, stats in probe["images"].items():
        # receipt - stamp for frames received in the steady window
        latency += [lat for t, lat in zip(stats["receive_ns"], stats["latency_ms"]) if window[0] <= t <= window[1]]
    published = sum(window[0] <= t <= window[1] for t in obs["joint_states"]["receive_ns"])
    received = min(sum(window[0] <= t <= window[1] for t in s["receive_ns"]) for s in probe["images"].values())
    report = h.outage_report(obs, ph["link_down_ns"], ph["link_up_ns"], _max_step())
    return {"transport": transport, "bytes_per_s": h.link_bytes_per_s(obs, *window),
            "image_latency_ms_p50": _pct(latency, 50), "image_latency_ms_p99": _pct(latency, 99),
            "image_bytes_mean": float(np.mean([s["bytes_mean"] for s in probe["images"].values()])),
            "frames_published": published, "frames_received_min": received,
            "sensor_hz": published / ((window[1] - window[0]) / 1e9), "outage": report,
            "sim_tick_ms": _sim_ticks(run["robot_log"])}


def _sim_ticks(log: str) -> list[float]:
    import re

    return [float(x) for x in re.findall(r"sim tick \(physics \+ render \+ publish\) mean ([0-9.]+) ms", log)]


def policy_run(h, transport: str, seed: int, seconds: float, size: int, steps: int, work: Path) -> dict:
    """transport raw / compressed across the hosts, or "one_host" (the whole graph on the robot side, raw)."""
    scene = ["--seed", str(seed), "--image-height", str(size), "--image-width", str(size),
             "--checkpoint", str(CKPT)]
    policy = ["--arg", "predicted_images:=false", "--arg", f"denoising_steps:={steps}"]
    with h.TwoHosts() as hosts:
        run = h.run_split_graph(hosts, work, _env(),
                                robot_args=[*scene, *policy] if transport == "one_host" else scene,
                                gpu_args=None if transport == "one_host" else
                                [*scene, "--image-transport", transport, *policy],
                                steady_s=seconds, outage_s=0.0)
    ph, obs = run["phases"], run["observer"]
    latency = h.chunk_latency_ms(obs, ph["steady_ns"], ph["end_ns"])
    sim = obs["sim"]
    return {"transport": transport, "seed": seed, "image_size": size, "denoising_steps": steps,
            "success": sim["success"],
            "max_reward": sim["max_reward"],
            "success_after_s": None if not sim["success"] else (sim["success_ns"] - ph["steady_ns"]) / 1e9,
            "chunks": len(latency), "chunk_latency_ms_p50": _pct(latency, 50),
            "chunk_latency_ms_p99": _pct(latency, 99),
            "bytes_per_s": h.link_bytes_per_s(obs, ph["steady_ns"], ph["end_ns"]),
            "sim_tick_ms": _sim_ticks(run["robot_log"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transports", nargs="+", default=["raw", "compressed"])
    ap.add_argument("--link-runs", type=int, default=1, help="link runs per transport")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="policy runs (none: skip)")
    ap.add_argument("--seconds", type=float, default=30.0, help="policy run length after the executor plays")
    ap.add_argument("--image-size", type=int, default=224, help="policy runs: sim camera size (the demo's)")
    ap.add_argument("--denoising-steps", type=int, default=1,
                    help="policy runs: denoising steps per chunk (the demo's 1; the checkpoint deploys 10)")
    ap.add_argument("--one-host", action="store_true", help="also the policy runs with the whole graph on one side")
    ap.add_argument("--work", default=None, help="keep each run's logs and JSON here (default: a temporary directory)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="OMP_NUM_THREADS for every process (0: torch's default); 1 on an oversubscribed machine, "
                         "where spinning OpenMP threads slow the policy many times over")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    h = _harness()
    if args.torch_threads > 0:
        THREADS["OMP_NUM_THREADS"] = str(args.torch_threads)
    why = h.unavailable()
    if why:
        print(f"two_hosts: {why}", file=sys.stderr)
        return 2
    started = time.time()
    result = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs", "load_before": os.getloadavg(),
              "torch_threads": args.torch_threads or "default",
              "link": [], "policy": []}
    with tempfile.TemporaryDirectory(prefix="two_hosts_") as tmp:
        tmp = args.work or tmp
        for transport in args.transports:
            for i in range(args.link_runs):
                work = Path(tmp) / f"link_{transport}_{i}"
                work.mkdir(parents=True)
                r = link_run(h, transport, work)
                result["link"].append(r)
                print(f"link {transport}: {r['bytes_per_s'] / 1e6:.2f} MB/s, image latency p50 "
                      f"{r['image_latency_ms_p50']:.1f} ms p99 {r['image_latency_ms_p99']:.1f} ms, frames "
                      f"{r['frames_received_min']}/{r['frames_published']} at {r['sensor_hz']:.1f} Hz; outage: first fresh "
                      f"chunk {r['outage']['first_fresh_chunk_after_s']} s, motion {r['outage']['motion_resumed_after_s']} s "
                      f"after link-up, hold {r['outage']['longest_hold_ticks']} ticks, max step "
                      f"{r['outage']['max_step_over_limit']:.2f} of the limit", flush=True)
        for seed in args.seeds:
            for transport in [*args.transports, *(["one_host"] if args.one_host else [])]:
                work = Path(tmp) / f"policy_{transport}_{seed}"
                work.mkdir(parents=True)
                r = policy_run(h, transport, seed, args.seconds, args.image_size, args.denoising_steps, work)
                result["policy"].append(r)
                print(f"policy {transport} seed {seed}: {'SUCCESS' if r['success'] else 'fail'} (max reward "
                      f"{r['max_reward']}), {r['chunks']} chunks, obs -> chunk p50 {r['chunk_latency_ms_p50']} ms p99 "
                      f"{r['chunk_latency_ms_p99']} ms, {r['bytes_per_s'] / 1e6:.2f} MB/s", flush=True)
    result["load_after"] = os.getloadavg()
    result["seconds"] = round(time.time() - started)
    for transport in [*args.transports, "one_host"]:
        runs = [r for r in result["policy"] if r["transport"] == transport]
        if runs:
            print(f"policy {transport}: {sum(r['success'] for r in runs)}/{len(runs)} scenes solved")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
