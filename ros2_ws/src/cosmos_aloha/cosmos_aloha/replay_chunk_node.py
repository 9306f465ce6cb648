"""`replay_chunks` node: publishes JointTrajectory chunks from a scripted trajectory, like a policy would.

Stands in for the policy (demo, graph tests, bring-up checks): a sine around the first joint state, or the
actions of a recorded episode (.hdf5) / array (.npy), each chunk stamped with the latest observation time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from cosmos_aloha import topics
from cosmos_aloha.chunks import chunk_to_msg
from cosmos_aloha.conversions import msg_to_joints, stamp_to_ns
from cosmos_aloha.node_runtime import declare_parameters, run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.robot import aloha

PARAMETERS = (
    Param("trajectory", "sine", "sine (around the first joint state), an episode .hdf5, or a (T, 14) actions .npy"),
    Param("trajectory_hz", aloha.CONTROL_HZ, "sample rate of a file trajectory (raw ALOHA episodes are 50 Hz)"),
    Param("chunk_len", aloha.CHUNK_SIZE, "steps per chunk"),
    Param("step_hz", aloha.CONTROL_HZ, "chunk step rate (the executor's control rate)"),
    Param("publish_period_s", 1.0, "a new chunk this often, like a policy re-planning at half the chunk"),
    Param("topic", topics.ACTION_CHUNK.name, f"where to publish; {topics.PLAN_CHUNK.name} stands in for the planner"),
    Param("loop", False, "false: play a file trajectory once, then the executor holds; true: repeat it"),
    Param("sine_amplitude", 0.15, "rad on waists, shoulders, wrist_rotates; normalised (x2) on the grippers"),
    Param("sine_period_s", 4.0, "sine period"),
)
# Joints the sine moves (policy layout): both waists, shoulders, wrist_rotates and grippers.
SINE_JOINTS = (0, 1, 5, 6, 7, 8, 12, 13)


def load_actions(spec: str) -> np.ndarray:
    """actions_T_J from an episode .hdf5 (its /action) or a .npy array."""
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"trajectory {spec!r} is neither 'sine' nor an existing .hdf5/.npy file")
    if path.suffix in (".hdf5", ".h5"):
        from cosmos_policy_core.data.episode import read_episode_hdf5

        actions = read_episode_hdf5(path, cameras=()).action
    elif path.suffix == ".npy":
        actions = np.load(path)
    else:
        raise ConfigError(f"trajectory {spec}: expected a .hdf5 episode or a .npy (T, 14) array")
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != 14 or not np.isfinite(actions).all():
        raise DataError(f"trajectory {spec}: need finite (T, 14) actions, got {actions.shape}")
    return actions


def sine_actions(center: np.ndarray, t_s: np.ndarray, amplitude: float, period_s: float) -> np.ndarray:
    """(T, 14): `center` plus a sine on SINE_JOINTS; grippers swing around half open."""
    out = np.repeat(center[None, :], len(t_s), axis=0)
    wave = amplitude * np.sin(2 * np.pi * t_s / period_s)
    for j in SINE_JOINTS:
        out[:, j] = (0.5 + 2 * wave) if j in (6, 13) else center[j] + wave
    return out


class ReplayChunkNode(Node):
    def __init__(self):
        super().__init__("replay_chunks")
        p = declare_parameters(self, PARAMETERS)
        self.p = p
        self._file_actions = None if p.trajectory == "sine" else load_actions(p.trajectory)
        self._pub = self.create_publisher(JointTrajectory, p.topic, profile(topics.ACTION_CHUNK))
        self.create_subscription(JointState, topics.JOINT_STATES.name, self._on_joint_state,
                                 profile(topics.JOINT_STATES))
        self._latest: tuple[int, np.ndarray] | None = None
        self._start_ns: int | None = None
        self._last_stamp: int | None = None
        self._center: np.ndarray | None = None
        self._step_ns = int(round(1e9 / p.step_hz))
        self.published = 0
        self.create_timer(p.publish_period_s, self._publish)
        what = "sine" if self._file_actions is None else f"{len(self._file_actions)} actions from {p.trajectory}"
        self.get_logger().info(f"replaying {what} as {p.chunk_len}-step chunks on {p.topic} every {p.publish_period_s:g} s")

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            qpos = msg_to_joints(msg)
        except ValueError:
            return
        self._latest = (stamp_to_ns(msg.header.stamp), qpos)

    def chunk_for(self, stamp_ns: int) -> np.ndarray | None:
        """Actions for times stamp + i * step (None once a non-looping file trajectory has ended)."""
        t_s = (stamp_ns - self._start_ns) / 1e9 + np.arange(self.p.chunk_len) * self._step_ns / 1e9
        if self._file_actions is None:
            return sine_actions(self._center, t_s, self.p.sine_amplitude, self.p.sine_period_s)
        index = np.round(t_s * self.p.trajectory_hz).astype(int)
        n = len(self._file_actions)
        if self.p.loop:
            index %= n
        elif index[0] >= n:
            return None
        return self._file_actions[np.minimum(index, n - 1)]

    def _publish(self) -> None:
        if self._latest is None:
            return  # no observation yet: a policy could not act either
        stamp, qpos = self._latest
        if self._last_stamp is not None and stamp <= self._last_stamp:
            return  # no new observation since the last chunk: a policy would not have a new input either
        self._last_stamp = stamp
        if self._start_ns is None:
            self._start_ns, self._center = stamp, qpos.copy()
        actions = self.chunk_for(stamp)
        if actions is None:
            return
        self._pub.publish(chunk_to_msg(actions, stamp, self._step_ns))
        self.published += 1


def main(argv: list[str] | None = None) -> int:
    return run_node(ReplayChunkNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
