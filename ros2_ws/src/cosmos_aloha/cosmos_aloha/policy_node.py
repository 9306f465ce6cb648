"""`policy` lifecycle node: Cosmos Policy on the latest synchronized observation, the next chunk computed while one executes.

Publishes cosmos/action_chunk (stamped with the observation time) first, then the chunk's timing breakdown
(~/chunk_timing), then the value and the predicted frames.
"""
from __future__ import annotations


import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Float32

from cosmos_aloha import topics
from cosmos_aloha.chunks import chunk_to_msg
from cosmos_aloha.conversions import ns_to_stamp
from cosmos_aloha.inference_node import COMMON_PARAMETERS, InferenceNode, Job, load_policy
from cosmos_aloha.markers import value_marker
from cosmos_aloha.node_runtime import run_node
from cosmos_aloha.parameters import Param, replaced
from cosmos_aloha.qos import profile
from cosmos_policy_core.checkpoint import ENSEMBLE_QUERY_STEPS, EXECUTION_MODES, DeploySettings
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation
from cosmos_policy_core.runtime.scheduling import TriggerConfig

PARAMETERS = (
    *replaced(COMMON_PARAMETERS, trigger_mode="latency"),
    Param("num_steps", 0, "denoising steps per chunk; 0 = the checkpoint's deploy setting (1 is the real-time "
                          "mode; the reference deploys 10, blocking)"),
    Param("execution", "", "\"\" = the checkpoint's deploy setting; whole_chunks: the next chunk by trigger_mode; "
                           "temporal_ensemble: the executor averages the live chunks (its own temporal_ensemble), so "
                           "start the next chunk ensemble_query_steps after the last one's observation, whatever "
                           "trigger_mode says, and decode predicted frames for one chunk per chunk length. The launch "
                           "argument temporal_ensemble sets it"),
    Param("ensemble_query_steps", 0, "temporal_ensemble: steps between chunk observations; 0 = the checkpoint's "
                                     f"query_every_steps (or {ENSEMBLE_QUERY_STEPS} if it deploys whole chunks)"),
)


def execution_settings(p, deploy: DeploySettings) -> tuple[bool, int]:
    """(temporal ensembling?, steps between queries) from the parameters, defaulting to the checkpoint's."""
    execution = str(p.execution) or deploy.execution
    if execution not in EXECUTION_MODES:
        raise ConfigError(f"parameter 'execution' must be \"\" or one of {EXECUTION_MODES}, got {execution!r}")
    ensembling = execution == "temporal_ensemble"
    every = int(p.ensemble_query_steps) or (deploy.query_every_steps if deploy.temporal_ensemble
                                            else ENSEMBLE_QUERY_STEPS)
    return ensembling, every


def chunk_timing_msg(node_name: str, job: Job, start_ns: int, model_done_ns: int, published_ns: int,
                     stages_s: dict[str, float]) -> DiagnosticArray:
    """One chunk's timing, stamped like the chunk (the observation time), in ms from that stamp onwards:

    wait_ms      observation stamp -> picked up (sensor transport + waiting for the complete set)
    handoff_ms   picked up -> the worker starts (observation assembly, thread wake-up)
    model_ms     the worker's model call, wall clock (encode + denoise + actions), <stage>_ms its parts
    publish_ms   model done -> the chunk's publish() returned
    """
    values = {"wait_ms": (job.picked_ns - job.stamp_ns) / 1e6, "handoff_ms": (start_ns - job.picked_ns) / 1e6,
              "model_ms": (model_done_ns - start_ns) / 1e6, "publish_ms": (published_ns - model_done_ns) / 1e6,
              "skew_ms": job.skew_ns / 1e6, **{f"{k}_ms": v * 1e3 for k, v in stages_s.items()}}
    status = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"cosmos_aloha/{node_name}/chunk_timing",
                              hardware_id=node_name, message="chunk published",
                              values=[KeyValue(key=k, value=f"{v:.3f}") for k, v in values.items()])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = ns_to_stamp(job.stamp_ns)
    return msg


class PolicyNode(InferenceNode):
    def __init__(self, name: str = "policy", topic_prefix: str = topics.PREDICTED,
                 chunk_topic: str = topics.ACTION_CHUNK.name):
        self._prefix, self._chunk_topic = topic_prefix, chunk_topic
        self.ensembling, self.query_steps = False, ENSEMBLE_QUERY_STEPS
        super().__init__(name, PARAMETERS)

    # -- InferenceNode hooks ----------------------------------------------------------------------------
    def load(self) -> CosmosPolicy:
        self.ensembling, self.query_steps = execution_settings(self.p, DeploySettings.from_checkpoint(self.p.checkpoint))
        return load_policy(self.p)

    def _decode_due(self) -> bool:
        """Predicted frames for every chunk; with temporal ensembling for one chunk per chunk length (every
        chunk_len / query_steps chunks, the first included), so the decoder, which on a CPU takes longer
        than the model, does not space the chunks out."""
        if not self.ensembling:
            return True
        every = max(1, self.trigger.config.chunk_len // self.query_steps)
        return (self.counters["chunks_published"] - 1) % every == 0

    def trigger_config(self, chunk_len: int) -> TriggerConfig:
        if not self.ensembling:
            return super().trigger_config(chunk_len)
        every = self.query_steps
        if not 1 <= every <= chunk_len:
            raise ConfigError(f"ensemble_query_steps must be in 1..{chunk_len}, got {every}")
        return TriggerConfig(chunk_len - every, chunk_len, self._step_ns, "fixed")

    def output_topics(self) -> tuple[str, str]:
        return self._chunk_topic, self._prefix

    def create_outputs(self) -> None:
        super().create_outputs()
        self._pubs["timing"] = self.create_lifecycle_publisher(DiagnosticArray, topics.CHUNK_TIMING.name,
                                                               profile(topics.CHUNK_TIMING))

    def warm_up(self, observation: Observation) -> dict[str, float]:
        result = self.policy.infer(observation, seed=int(self.p.seed), num_steps=int(self.p.num_steps))
        if self.p.return_future_images:
            result.future_images()
        return _stages(result.chunk.timings)

    def infer(self, job: Job) -> int | None:
        """Worker thread: sample, publish the chunk at once, then decode and publish the predicted frames."""
        start_ns = self.now_ns()
        result = self.policy.infer(job.observation, seed=int(self.p.seed), num_steps=int(self.p.num_steps),
                                   cancelled=self.cancelled)
        if result is None or self.cancelled():
            return None
        actions, value, timings = result.chunk.actions, result.chunk.value, _stages(result.chunk.timings)
        model_done_ns = self.now_ns()
        self._pubs["chunk"].publish(chunk_to_msg(actions, job.stamp_ns, self._step_ns))
        published_ns = self.now_ns()
        self._pubs["timing"].publish(
            chunk_timing_msg(self.get_name(), job, start_ns, model_done_ns, published_ns, timings))
        latency_s = (published_ns - job.stamp_ns) / 1e9
        self.latency.add(latency_s)
        self.counters["chunks_published"] += 1
        self._pubs["value"].publish(Float32(data=value))
        self._pubs["marker"].publish(value_marker(value, job.stamp_ns, label=self.get_name()))
        if self.p.return_future_images and self._decode_due() and not self.cancelled():
            images = result.future_images()
            timings["decode"] = result.chunk.timings["decode"]
            # Stamped with the observation they were predicted from (they show t + chunk length).
            for cam, image in images.items():
                self._pubs[cam].publish(np.ascontiguousarray(image), job.stamp_ns, frame_id=cam)
        self.last_timings = {"wait": (job.picked_ns - job.stamp_ns) / 1e9, **timings}
        self.get_logger().info(
            f"chunk {self.counters['chunks_published']}: observation -> chunk {latency_s * 1e3:.0f} ms ("
            + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in self.last_timings.items())
            + f" ms), skew {job.skew_ns / 1e6:.0f} ms, value {value:.3f}")
        return job.stamp_ns


def _stages(timings: dict[str, float]) -> dict[str, float]:
    """The stages a call went through (seconds), without those it skipped (decode before the frames)."""
    return {k: v for k, v in timings.items() if v > 0}


def main(argv: list[str] | None = None) -> int:
    return run_node(PolicyNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
