"""The lifecycle shared by the model nodes (policy, planner): load + warm up on configure, infer off-thread when active.

A subclass says how to load its model, run one job and publish; this module owns sync, trigger, worker and diagnostics.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Float32
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker

from cosmos_aloha import topics
from cosmos_aloha.image_transport import (PUBLISHER_PARAMETERS, SUBSCRIBER_PARAMETERS, ImagePublisher,
                                          check_transport)
from cosmos_aloha.managed_node import ManagedNode
from cosmos_aloha.observation_sync import ObservationSync
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.errors import ConfigError, CosmosAlohaError
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation, policy_config_for
from cosmos_policy_core.runtime.scheduling import ChunkTrigger, InferenceWorker, LatencyWindow, TriggerConfig

COMMON_PARAMETERS = (
    Param("checkpoint", "", "checkpoint directory (launch argument checkpoint); loaded and warmed up on configure"),
    Param("engine", "torch", "torch, compile (torch.compile; on a GPU with CUDA graphs, compiled during configure), "
                             "onnx, tensorrt (launch argument engine); on a GPU, torch and compile run in bf16"),
    Param("engine_dir", "", "onnx / tensorrt: the `cosmos-aloha export` output; \"\" = <checkpoint>/export"),
    Param("device", "auto", "auto (cuda when available), cpu, cuda, cuda:N"),
    Param("task", "", "instruction text; \"\" = the checkpoint's task (the first, with a warning, if it has several)"),
    Param("seed", 0, "noise seed of every sample"),
    Param("return_future_images", True, "decode and publish the predicted frames after the chunk (so the chunk never "
                                        "waits for the decoder); launch argument predicted_images"),
    *PUBLISHER_PARAMETERS,   # the predicted frames' compressed topics
    Param("cameras", list(aloha.CAMERAS), "cameras, subscribed as <cam>/image_raw"),
    *SUBSCRIBER_PARAMETERS,
    Param("max_skew_ms", 20.0, "each camera stamp within this of the joint_states stamp (half a tick, so two ticks "
                               "never mix); the joint state's stamp is the observation time"),
    Param("max_observation_age_ms", 500.0, "never start from an older observation (<= 0: no limit)"),
    Param("max_future_ms", 500.0, "refuse observations stamped further ahead of this host's clock: the robot's clock "
                                  "is ahead (two hosts out of sync; reported in diagnostics); < 0: no limit"),
    Param("trigger_mode", "fixed", "fixed: start the next inference at trigger_remaining_steps left; latency: at the "
                                   "measured observation -> chunk latency (p90 of the last 100, in steps, rounded up) "
                                   "plus trigger_margin_steps left, so each chunk plays almost to its end"),
    Param("trigger_remaining_steps", 25, "fixed mode: start the next inference when the last published chunk has this "
                                         "many steps left (below the latency in steps the executor holds for the "
                                         "difference); latency mode: until the first latency is measured"),
    Param("trigger_margin_steps", 2, "latency mode: slack steps on top of the measured latency"),
    Param("step_hz", aloha.CONTROL_HZ, "chunk step rate (the executor's control_hz)"),
    Param("nice", 5, "CPU niceness added to the whole process (0 = unchanged): on a shared CPU the model calls "
                      "yield to the sensors, the driver and the executor, which must keep their rate"),
    Param("torch_threads", 0, "intra-op threads of the model's torch calls on a CPU (0 = torch's default, one per "
                              "core); model processes that each take every core spin against each other"),
)


@dataclass(frozen=True)
class Job:
    """One inference: the observation and when it was picked up (ns of the node clock)."""

    observation: Observation
    stamp_ns: int
    picked_ns: int
    skew_ns: int


def load_policy(p, planning_checkpoint: str | None = None) -> CosmosPolicy:
    """The checkpoint with the engine the parameters name (ConfigError / CheckpointError say what is wrong)."""
    if not p.checkpoint:
        raise ConfigError("parameter 'checkpoint' is empty: pass a checkpoint directory "
                          "(`-p checkpoint:=DIR`, launch argument checkpoint:=DIR)")
    # Engine, device and dtype are resolved by the library (engines.resolve), as for `act` and `sim eval`.
    return CosmosPolicy.from_checkpoint(
        p.checkpoint, engine=p.engine, device=p.device, export_dir=p.engine_dir or None,
        planning_checkpoint=planning_checkpoint or None,
        # The options the checkpoint's training implies (no test-time crop without training crops).
        config=policy_config_for(p.checkpoint, **_num_steps_override(p)))


def _num_steps_override(p) -> dict:
    """A positive `num_steps` parameter overrides the checkpoint's deploy setting; 0 or none keeps it."""
    num_steps = int(getattr(p, "num_steps", 0))
    return {"num_steps": num_steps} if num_steps > 0 else {}


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


class InferenceNode(ManagedNode):
    """Lifecycle: configure = load + warm up + subscribe; activate = start the worker; deactivate = let it finish.

    Subclasses implement `load`, `output_topics`, `warm_up` and `infer` (worker thread: compute and publish;
    return the published chunk's stamp, or None when nothing was published), and may add outputs.
    """

    def __init__(self, name: str, parameters) -> None:
        self.policy: CosmosPolicy | None = None
        self._pubs: dict = {}   # create_outputs: name -> publisher
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
        self.unfinished_work = False   # node_runtime.run_node: a model call outlived close()
        super().__init__(name, parameters)
        self._step_ns = int(round(1e9 / float(self.p.step_hz)))
        if int(self.p.nice) > 0:
            os.nice(int(self.p.nice))
        if int(self.p.torch_threads) > 0:
            torch.set_num_threads(int(self.p.torch_threads))

    # -- subclass hooks ---------------------------------------------------------------------------------
    def load(self) -> CosmosPolicy:
        raise NotImplementedError

    def output_topics(self) -> tuple[str, str]:
        """(the chunk's topic, the prefix of the predicted value and frames)."""
        raise NotImplementedError

    def create_outputs(self) -> None:
        """Lifecycle publishers: the chunk, its value and value marker, the predicted frames when asked."""
        chunk_topic, prefix = self.output_topics()
        make = self.create_lifecycle_publisher
        value = topics.predicted_value(prefix)
        self._pubs = {
            "chunk": make(JointTrajectory, chunk_topic, profile(topics.ACTION_CHUNK)),
            "value": make(Float32, value.name, profile(value)),
            "marker": make(Marker, topics.VALUE_MARKER.name, profile(topics.VALUE_MARKER)),
        }
        if self.p.return_future_images:
            for cam in self.policy.layout.camera_sources:
                topic = topics.predicted_image(cam, prefix)
                self._pubs[cam] = ImagePublisher(make, topic.name, profile(topic), int(self.p.jpeg_quality),
                                                 bool(self.p.compressed))

    def destroy_outputs(self) -> None:
        for pub in self._pubs.values():
            for each in pub.publishers if isinstance(pub, ImagePublisher) else (pub,):
                self.destroy_lifecycle_publisher(each)
        self._pubs = {}

    def warm_up(self, observation: Observation) -> dict[str, float]:
        raise NotImplementedError

    def infer(self, job: Job) -> int | None:
        raise NotImplementedError

    def trigger_config(self, chunk_len: int) -> TriggerConfig:
        """When to start the next inference (the trigger_* parameters)."""
        return TriggerConfig(int(self.p.trigger_remaining_steps), chunk_len, self._step_ns, str(self.p.trigger_mode),
                             int(self.p.trigger_margin_steps))

    # -- lifecycle --------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        t0 = time.perf_counter()
        try:
            check_transport(str(self.p.image_transport))
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
            self.release()
            return TransitionCallbackReturn.FAILURE
        except Exception:   # a fault in the code: rclpy would swallow it silently, so show where it is
            self.get_logger().error(f"configure failed on an unexpected error:\n{traceback.format_exc()}")
            self.release()
            return TransitionCallbackReturn.ERROR
        self.obs_sync = ObservationSync(self, list(self.p.cameras), float(self.p.max_skew_ms),
                                        float(self.p.max_observation_age_ms), on_message=self._maybe_start,
                                        transport=str(self.p.image_transport),
                                        max_future_ms=float(self.p.max_future_ms))
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

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_shutdown(state)
        self.state_label = "finalized"
        return result

    def _stop_worker(self, timeout_s: float = 30.0) -> bool:
        """Stop the worker after its running job (up to `timeout_s`); False when the job still runs."""
        stopped = True
        if self.worker is not None:
            self._cancel.set()
            stopped = self.worker.stop(timeout=timeout_s)
            if not stopped and rclpy.ok():   # at exit the stop is expected (and the log could not reach rosout)
                self.get_logger().warning(f"inference still running after {timeout_s:g} s; its result will be dropped")
            self.worker = None
        return stopped

    def release(self) -> None:
        self._stop_worker()
        if self.obs_sync is not None:
            self.obs_sync.destroy()
            self.obs_sync = None
        self.destroy_outputs()
        self.policy = None
        self.state_label = "unconfigured"

    def close(self) -> None:
        """Called by node_runtime.run_node on exit: the running inference stops at its next stage boundary.

        A stage is one model call, seconds long on a busy CPU, and cannot be interrupted; rather than
        outlast the stop's grace period (graph.STOP_GRACE_S), the process ends without waiting for it
        (`unfinished_work`: torch running in a thread while the interpreter finalizes would abort it).
        """
        self.unfinished_work = not self._stop_worker(timeout_s=1.0)

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
        try:
            observation = self.obs_sync.observation(synced, self.task)
        except ValueError as exc:   # a compressed frame that does not decode: wait for the next set
            self.get_logger().warning(f"observation skipped: {exc}", throttle_duration_sec=5.0)
            return
        job = Job(observation, synced.stamp_ns, now, synced.skew_ns)
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

    def diagnostic_status(self) -> tuple[int, str, dict[str, str]]:
        values = self.diagnostic_values()
        if self._last_error:
            return DiagnosticStatus.ERROR, "inference failed", values
        if self.state_label == "active" and values.get("observation") == "synchronized":
            return DiagnosticStatus.OK, "active", values
        message = self.state_label if self.state_label != "active" else values.get("observation", "")
        return DiagnosticStatus.WARN, message, values
