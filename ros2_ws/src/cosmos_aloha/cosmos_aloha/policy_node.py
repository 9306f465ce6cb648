"""`policy` lifecycle node: Cosmos Policy on the latest synchronized observation, the next chunk computed while one executes.

Publishes /cosmos/action_chunk (stamped with the observation time) first, then the chunk's timing breakdown
(~/chunk_timing), then the value and the predicted frames.
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image
from std_msgs.msg import Float32
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker

from cosmos_aloha.chunks import CHUNK_TOPIC, chunk_to_msg
from cosmos_aloha.conversions import image_to_msg, ns_to_stamp
from cosmos_aloha.inference_node import InferenceNode, Job, load_policy
from cosmos_aloha.markers import VALUE_MARKER_TOPIC, value_marker
from cosmos_aloha.node_runtime import run_node
from cosmos_aloha.qos import COMMAND_QOS, SENSOR_QOS
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.policy import CosmosPolicy, Observation
from cosmos_policy_core.runtime.scheduling import TriggerConfig

PREDICTED_PREFIX = "/cosmos/predicted"
# Per chunk, under the node's name (/policy/chunk_timing): where the observation -> chunk time went.
CHUNK_TIMING_TOPIC = "~/chunk_timing"
DEFAULTS = {
    "num_steps": 1,   # denoising steps per chunk: 1 is the real-time mode (the reference deploys 10, blocking)
    # Play each chunk almost to its end, as the reference does: re-querying mid-chunk cost the shipped sim
    # policy most of its successes (docs/training.md, "When to ask for the next chunk").
    "trigger_mode": "latency",
    # The executor averages the live chunks (launch argument temporal_ensemble): then query every
    # ensemble_query_steps instead (trigger_mode fixed at chunk length - ensemble_query_steps).
    "temporal_ensemble": False,
    "ensemble_query_steps": 5,
}


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
    def __init__(self, name: str = "policy", topic_prefix: str = PREDICTED_PREFIX, chunk_topic: str = CHUNK_TOPIC):
        self._prefix, self._chunk_topic = topic_prefix, chunk_topic
        self._pubs: dict = {}
        super().__init__(name, DEFAULTS)

    # -- InferenceNode hooks ----------------------------------------------------------------------------
    def load(self) -> CosmosPolicy:
        return load_policy(self.p)

    def _decode_due(self) -> bool:
        """Predicted frames for every chunk; with temporal ensembling for one chunk per chunk length (every
        chunk_len / ensemble_query_steps chunks, the first included), so the decoder, which on a CPU takes
        longer than the model, does not space the chunks out."""
        if not self.p.temporal_ensemble:
            return True
        every = max(1, self.trigger.config.chunk_len // int(self.p.ensemble_query_steps))
        return (self.counters["chunks_published"] - 1) % every == 0

    def trigger_config(self, chunk_len: int) -> TriggerConfig:
        if not self.p.temporal_ensemble:
            return super().trigger_config(chunk_len)
        every = int(self.p.ensemble_query_steps)
        if not 1 <= every <= chunk_len:
            raise ConfigError(f"ensemble_query_steps must be in 1..{chunk_len}, got {every}")
        return TriggerConfig(chunk_len - every, chunk_len, self._step_ns, "fixed")

    def create_outputs(self) -> None:
        make = self.create_lifecycle_publisher
        self._pubs = {
            "chunk": make(JointTrajectory, self._chunk_topic, COMMAND_QOS),
            "value": make(Float32, f"{self._prefix}/value", COMMAND_QOS),
            "marker": make(Marker, VALUE_MARKER_TOPIC, COMMAND_QOS),
            "timing": make(DiagnosticArray, CHUNK_TIMING_TOPIC, COMMAND_QOS),
        }
        if self.p.return_future_images:
            for cam in self.policy.layout.camera_sources:
                self._pubs[cam] = make(Image, f"{self._prefix}/{cam}", SENSOR_QOS)

    def destroy_outputs(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}

    def warm_up(self, observation: Observation) -> dict[str, float]:
        timings, latent, cond = self._sample(observation)
        if self.p.return_future_images:
            t0 = time.perf_counter()
            self.policy.decode_future_images(cond, latent)
            timings["decode"] = time.perf_counter() - t0
        return timings

    def infer(self, job: Job) -> int | None:
        """Worker thread: sample, publish the chunk at once, then decode and publish the predicted frames."""
        start_ns = self.now_ns()
        timings, latent, cond = self._sample(job.observation)
        if self.cancelled():
            return None
        policy = self.policy
        actions = policy.actions_from_latent(latent)[0]
        value = float(policy.values_from_latent(latent)[0])
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
            t0 = time.perf_counter()
            images = policy.decode_future_images(cond, latent)[0]
            timings["decode"] = time.perf_counter() - t0
            # Stamped with the observation they were predicted from (they show t + chunk length).
            for cam, image in images.items():
                self._pubs[cam].publish(image_to_msg(np.ascontiguousarray(image), job.stamp_ns, frame_id=cam))
        self.last_timings = {"wait": (job.picked_ns - job.stamp_ns) / 1e9, **timings}
        self.get_logger().info(
            f"chunk {self.counters['chunks_published']}: observation -> chunk {latency_s * 1e3:.0f} ms ("
            + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in self.last_timings.items())
            + f" ms), skew {job.skew_ns / 1e6:.0f} ms, value {value:.3f}")
        return job.stamp_ns

    # -- the model call ---------------------------------------------------------------------------------
    def _sample(self, observation: Observation):
        """(timings, latent, conditioning) of one policy sample, the stages timed separately."""
        policy = self.policy
        cond = policy.encode_observation(observation)
        if self.cancelled():
            return cond.timings, None, cond
        t0 = time.perf_counter()
        latent = policy.sample_actions(cond, [int(self.p.seed)], int(self.p.num_steps))
        timings = {**cond.timings, "denoise": time.perf_counter() - t0}
        return timings, latent, cond


def main(argv: list[str] | None = None) -> int:
    return run_node(PolicyNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
