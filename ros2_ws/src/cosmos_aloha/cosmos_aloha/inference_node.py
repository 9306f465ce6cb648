"""The lifecycle shared by the model nodes (policy, planner): load + warm up on configure, infer off-thread when active.

A subclass says how to load its model, run one job and publish; this module owns sync, trigger, worker and diagnostics.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from cosmos_aloha.node_runtime import declare_parameters
from cosmos_aloha.observation_sync import ObservationSync
from cosmos_policy_core.errors import ConfigError, CosmosAlohaError
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation, policy_config_for
from cosmos_policy_core.runtime.scheduling import ChunkTrigger, InferenceWorker, LatencyWindow, TriggerConfig

CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
ENGINES = ("torch", "compile", "onnx", "tensorrt")
COMMON_DEFAULTS = {
    "checkpoint": "",                 # our checkpoint directory (config.json + safetensors + stats + texts)
    "engine": "torch",                # torch | compile | onnx | tensorrt
    "engine_dir": "",                 # onnx / tensorrt: `cosmos-aloha export` output ("" = <checkpoint>/export)
    "device": "auto",                 # auto (cuda when available) | cpu | cuda | cuda:N
    "task": "",                       # instruction; "" = the checkpoint's task (the first if it has several)
    "seed": 0,                        # noise seed of every sample
    "return_future_images": True,     # decode and publish the predicted frames
    "cameras": list(CAMERAS),
    "max_skew_ms": 20.0,              # each camera stamp at most this far from the joint state's
    "max_observation_age_ms": 500.0,  # never start from an older observation (<= 0: no limit)
    "trigger_mode": "fixed",          # fixed: at trigger_remaining_steps left; latency: at measured latency + margin
    "trigger_remaining_steps": 25,    # start the next inference when the executing chunk has this many steps left
    "trigger_margin_steps": 2,        # latency mode: steps of slack on top of the measured latency (p90)
    "step_hz": 25.0,                  # chunk step rate (the executor's control rate)
    "autostart": True,                # configure + activate on start (ros2 launch / bringup); false: lifecycle services
    "diagnostics_hz": 1.0,
}


@dataclass(frozen=True)
class Job:
    """One inference: the observation and when it was picked up (ns of the node clock)."""

    observation: Observation
    stamp_ns: int
    picked_ns: int
    skew_ns: int


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(p, planning_checkpoint: str | None = None) -> CosmosPolicy:
    """The checkpoint with the engine the parameters name (ConfigError / CheckpointError say what is wrong)."""
    if not p.checkpoint:
        raise ConfigError("parameter 'checkpoint' is empty: pass a checkpoint directory "
                          "(`-p checkpoint:=DIR`, launch argument checkpoint:=DIR)")
    if p.engine not in ENGINES:
        raise ConfigError(f"unknown engine {p.engine!r}; choose one of {ENGINES}")
    import torch

    engine, compile_mode, engine_dir = p.engine, None, None
    device = resolve_device(p.device)
    on_gpu = str(device).startswith("cuda")
    if engine == "compile":
        # On a GPU: inductor + CUDA graphs (2B DiT forward 30.2 -> 19.2 ms on an H200, benchmarks/RESULTS.md).
        engine, compile_mode = "torch", "reduce-overhead" if on_gpu else "default"
    elif engine in ("onnx", "tensorrt"):
        engine_dir = Path(p.engine_dir or Path(p.checkpoint) / "export")
        if not engine_dir.is_dir():
            raise ConfigError(f"engine {engine} needs the export directory {engine_dir}; write it with "
                              f"`cosmos-aloha export --checkpoint {p.checkpoint} --format {engine} --out {engine_dir}` "
                              "or set the engine_dir parameter")
    return CosmosPolicy.from_checkpoint(
        p.checkpoint, engine=engine, device=device, compile=compile_mode, onnx_dir=engine_dir,
        dtype=torch.bfloat16 if on_gpu and engine == "torch" else None,  # bf16 on a GPU, as the reference serves
        planning_checkpoint=planning_checkpoint or None,
        # The options the checkpoint's training implies (no test-time crop without training crops).
        config=policy_config_for(p.checkpoint, num_steps=int(getattr(p, "num_steps", 10))))


def resolve_task(policy: CosmosPolicy, requested: str) -> tuple[str, str | None]:
    """(task, warning or None): the requested task (checked), or the checkpoint's first one."""
    if requested:
        policy.text_embedding(requested)   # ConfigError listing the known tasks
        return requested, None
    tasks = policy.known_tasks
    note = None if len(tasks) == 1 else (f"parameter 'task' is empty and the checkpoint has {len(tasks)} tasks; "
                                         f"using {tasks[0]!r} (others: {list(tasks[1:])})")
    return tasks[0], note


def dummy_observation(policy: CosmosPolicy, task: str) -> Observation:
    """Grey frames at the model size and a mid-range pose: exercises every stage once (warm-up)."""
    lay, stats = policy.layout, policy.stats
    images = {cam: np.full((lay.image_size, lay.image_size, 3), 128, np.uint8) for cam in lay.camera_sources}
    proprio = (np.asarray(stats.proprio_min) + np.asarray(stats.proprio_max)) / 2
    return Observation(images=images, proprio=proprio, task=task, timestamp=0.0)


class InferenceNode(LifecycleNode):
    """Lifecycle: configure = load + warm up + subscribe; activate = start the worker; deactivate = let it finish.

    Subclasses implement `load`, `create_outputs`, `destroy_outputs`, `warm_up` and `infer` (worker
    thread: compute and publish; return the published chunk's stamp, or None when nothing was published).
    """

    def __init__(self, name: str, defaults: dict) -> None:
        super().__init__(name)
        self.p = declare_parameters(self, {**COMMON_DEFAULTS, **defaults})
        self.policy: CosmosPolicy | None = None
        self.task = ""
        self.obs_sync: ObservationSync | None = None
        self.worker: InferenceWorker[Job] | None = None
        self.trigger = ChunkTrigger()
        self.latency = LatencyWindow()
        self._trigger_latency_s: float | None = None   # "latency" trigger: p90 of `latency`, updated per chunk
        self.counters: Counter[str] = Counter()
        self.last_timings: dict[str, float] = {}
        self.state_label = "unconfigured"
        self._last_error = ""
        self._ready_since: int | None = None
        self._cancel = threading.Event()
        self._step_ns = int(round(1e9 / float(self.p.step_hz)))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / float(self.p.diagnostics_hz), self._publish_diagnostics)
        self._autostart_timer = self.create_timer(0.01, self._autostart) if self.p.autostart else None

    # -- subclass hooks ---------------------------------------------------------------------------------
    def load(self) -> CosmosPolicy:
        raise NotImplementedError

    def create_outputs(self) -> None:
        raise NotImplementedError

    def destroy_outputs(self) -> None:
        raise NotImplementedError

    def warm_up(self, observation: Observation) -> dict[str, float]:
        raise NotImplementedError

    def infer(self, job: Job) -> int | None:
        raise NotImplementedError

    def trigger_config(self, chunk_len: int) -> TriggerConfig:
        """When to start the next inference (the trigger_* parameters)."""
        return TriggerConfig(int(self.p.trigger_remaining_steps), chunk_len, self._step_ns, str(self.p.trigger_mode),
                             int(self.p.trigger_margin_steps))

    # -- lifecycle --------------------------------------------------------------------------------------
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal("configure failed (see above); exiting so the graph does not run without it")
            raise SystemExit(1)
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal("activate failed; exiting")
            raise SystemExit(1)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        t0 = time.perf_counter()
        try:
            self.policy = self.load()
            self.task, note = resolve_task(self.policy, str(self.p.task))
            if note:
                self.get_logger().warning(note)
            lay = self.policy.layout
            self.trigger = ChunkTrigger(self.trigger_config(lay.chunk_size))
            t_load = time.perf_counter() - t0
            self.create_outputs()
            timings = self.warm_up(dummy_observation(self.policy, self.task))
        except (CosmosAlohaError, RuntimeError, OSError) as exc:  # bad files, engine, device, out of memory
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.obs_sync = ObservationSync(self, list(self.p.cameras), float(self.p.max_skew_ms),
                                        float(self.p.max_observation_age_ms), on_message=self._maybe_start)
        lay = self.policy.layout
        self.get_logger().info(
            f"configured: {self.p.checkpoint} ({self.p.engine} on {self.policy.device}, {lay.image_size}px, "
            f"chunk {lay.chunk_size}x{lay.action_dim}), task {self.task!r}; load {t_load:.2f} s, warm-up "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in timings.items()))
        self.state_label = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cancel.clear()
        self.worker = InferenceWorker(self._run_job, name=f"{self.get_name()}_inference", on_error=self._on_error)
        self.state_label = "active"
        cfg = self.trigger.config
        when = (f"{cfg.trigger_remaining_steps}" if cfg.mode == "fixed" else
                f"the measured latency + {cfg.margin_steps} (at first {cfg.trigger_remaining_steps})")
        self.get_logger().info(f"active: next chunk when {when} of {cfg.chunk_len} steps remain, observations "
                               f"within {self.p.max_skew_ms:g} ms")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.state_label = "inactive"
        self._stop_worker()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.state_label = "finalized"
        return super().on_shutdown(state)

    def _stop_worker(self, timeout_s: float = 30.0) -> None:
        if self.worker is not None:
            self._cancel.set()
            if not self.worker.stop(timeout=timeout_s):
                self.get_logger().warning(f"inference still running after {timeout_s:g} s; its result will be dropped")
            self.worker = None

    def _release(self) -> None:
        self._stop_worker()
        if self.obs_sync is not None:
            self.obs_sync.destroy()
            self.obs_sync = None
        self.destroy_outputs()
        self.policy = None
        self.state_label = "unconfigured"

    def close(self) -> None:
        """Called by node_runtime.run_node on exit: the running inference stops at its next stage boundary.

        It must end before the interpreter does (torch in a thread at exit aborts the process); bringup
        sends SIGTERM 8 s after SIGINT, so the wait stays below that.
        """
        self._stop_worker(timeout_s=7.0)

    def cancelled(self) -> bool:
        """For `infer` between stages: the node is deactivating or exiting, the result would be dropped."""
        return self._cancel.is_set()

    # -- the loop: every sensor message may complete a newer observation ----------------------------------
    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _maybe_start(self) -> None:
        worker = self.worker
        if worker is None or self.obs_sync is None:
            return
        now = self.now_ns()
        synced = self.obs_sync.latest(now)
        if synced is None or not self.trigger.should_start(now, synced.stamp_ns, worker.busy, self._trigger_latency_s):
            self._ready_since = None
            return
        # The first message of a new tick makes the trigger true while its set is still arriving: wait
        # for the set to complete (the tick's last message, a few ms), but never longer than one step.
        if not synced.complete:
            if self._ready_since is None:
                self._ready_since = now
            if now - self._ready_since < self._step_ns:
                return
        self._ready_since = None
        job = Job(self.obs_sync.observation(synced, self.task), synced.stamp_ns, now, synced.skew_ns)
        if worker.submit(job):
            self.trigger.started(synced.stamp_ns)

    def _run_job(self, job: Job) -> None:
        # Worker thread. The trigger's two stamps are plain ints written here and read by the executor
        # thread: a stale read only delays the next start by one message.
        stamp = self.infer(job)
        if self.trigger.config.mode == "latency":
            # Once per chunk, not per sensor message: the latency the trigger plans with.
            self._trigger_latency_s = self.latency.percentile(90)
        self._last_error = ""
        if stamp is not None:
            self.trigger.published(stamp)

    def _on_error(self, exc: BaseException) -> None:
        if not rclpy.ok():
            return   # shutting down: publishers are gone
        self.counters["inference_errors"] += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self.get_logger().error(f"inference failed: {self._last_error}", throttle_duration_sec=5.0)

    # -- diagnostics ------------------------------------------------------------------------------------
    def diagnostic_values(self) -> dict[str, str]:
        now = self.now_ns()
        values = {"state": self.state_label, "task": self.task}
        if self.obs_sync is not None:
            values["observation"] = self.obs_sync.why_not(now)
        remaining = self.trigger.remaining(now)
        values["chunk_steps_remaining"] = "none" if remaining is None else str(remaining)
        values["trigger_remaining_steps"] = str(self.trigger.threshold(self._trigger_latency_s))
        for q in (50, 99):
            v = self.latency.percentile(q)
            if v is not None:
                values[f"latency_ms_p{q}"] = f"{v * 1e3:.1f}"
        values.update({f"last_{k}_ms": f"{v * 1e3:.1f}" for k, v in self.last_timings.items()})
        values.update({k: str(v) for k, v in sorted(self.counters.items())})
        if self._last_error:
            values["last_error"] = self._last_error
        return values

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"cosmos_aloha/{self.get_name()}", hardware_id=self.get_name())
        values = self.diagnostic_values()
        if self._last_error:
            status.level, status.message = DiagnosticStatus.ERROR, "inference failed"
        elif self.state_label == "active" and values.get("observation") == "synchronized":
            status.level, status.message = DiagnosticStatus.OK, "active"
        else:
            status.level = DiagnosticStatus.WARN
            status.message = self.state_label if self.state_label != "active" else values.get("observation", "")
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)
