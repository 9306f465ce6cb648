"""`aloha_sim` node: MuJoCo ALOHA (AlohaSimEnv) behind the real robot's topics, physics 50 Hz, sensors 25 Hz.

Executes the latest /cosmos/joint_command (held between commands); reset service, latched success topic.
"""
from __future__ import annotations

import math
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Int32
from std_srvs.srv import Trigger

from cosmos_aloha.conversions import image_to_msg, joints_to_msg, msg_to_joints, ns_to_stamp
from cosmos_aloha.node_runtime import declare_parameters, run_node
from cosmos_aloha.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot.gripper import GripperConstants
from cosmos_policy_core.sim.env import CAMERA_TO_MUJOCO, PHYSICS_HZ, AlohaSimEnv

MAX_CATCH_UP = 5  # periods a late sim may run back-to-back to catch up before it skips
DEFAULTS = {
    "task": "transfer_cube",
    "seed": 0,
    "height": 480,
    "width": 640,
    "cameras": ["cam_high", "cam_left_wrist", "cam_right_wrist"],
    "publish_hz": 25.0,   # sensor rate; each tick holds the command for PHYSICS_HZ / publish_hz physics steps
    "gripper": "original_aloha",  # the sim's gripper constants (gym-aloha = ACT = original ALOHA)
}


def camera_info(model, mujoco_camera: str, height: int, width: int, stamp_ns: int, frame_id: str) -> CameraInfo:
    """Pinhole intrinsics of a MuJoCo camera (square pixels, principal point at the image centre)."""
    fovy = math.radians(float(model.cam_fovy[model.camera(mujoco_camera).id]))
    f = 0.5 * height / math.tan(0.5 * fovy)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    info = CameraInfo()
    info.header.stamp = ns_to_stamp(stamp_ns)
    info.header.frame_id = frame_id
    info.height, info.width = height, width
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class AlohaSimNode(Node):
    def __init__(self):
        super().__init__("aloha_sim")
        p = declare_parameters(self, DEFAULTS)
        self.params = p
        hz = float(p.publish_hz)
        if hz <= 0 or PHYSICS_HZ % hz:
            raise ConfigError(f"publish_hz must divide the {PHYSICS_HZ} Hz physics rate (25, 10, ...), got {hz}")
        self.env = AlohaSimEnv(
            task=p.task, height=p.height, width=p.width, cameras=tuple(p.cameras), control_hz=int(hz),
            gripper=GripperConstants.load(p.gripper),
        )
        self._image_pubs = {c: self.create_publisher(Image, f"/{c}/image_raw", SENSOR_QOS) for c in p.cameras}
        self._info_pubs = {c: self.create_publisher(CameraInfo, f"/{c}/camera_info", SENSOR_QOS) for c in p.cameras}
        self._joint_pub = self.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self._success_pub = self.create_publisher(Bool, "/cosmos/sim/success", LATCHED_QOS)
        self._reward_pub = self.create_publisher(Int32, "/cosmos/sim/reward", 10)
        self.create_subscription(JointState, "/cosmos/joint_command", self._on_command, COMMAND_QOS)
        self.create_service(Trigger, "/cosmos/sim/reset", self._on_reset)
        self._command: np.ndarray | None = None
        self._seed = int(p.seed)
        self._reset()
        self._step_ms: list[float] = []
        # An rcl timer drops a whole period whenever one tick overruns it, so one slow render (software
        # GL on a busy CPU) costs a frame. Instead poll at a quarter period and keep a schedule: a late
        # tick is followed by an early one and sim time stays with wall time on average.
        self._period_ns = int(round(1e9 / hz))
        self._next_ns = time.monotonic_ns()
        self._behind_logged = 0.0
        self.create_timer(0.25 / hz, self._poll, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"sim task {p.task} seed {self._seed}: {len(p.cameras)} cameras {p.height}x{p.width} at {hz:g} Hz, "
            f"physics {PHYSICS_HZ} Hz"
        )

    def _reset(self) -> None:
        obs = self.env.reset(seed=self._seed)
        # Until a command arrives the arms hold the reset pose (sim actions share the qpos gripper scale).
        self._hold = obs["qpos"].copy()
        self._command = None
        self._success = False
        self._success_pub.publish(Bool(data=False))
        self._publish(obs, self.get_clock().now().nanoseconds)

    def _on_command(self, msg: JointState) -> None:
        try:
            command = msg_to_joints(msg)
        except ValueError as exc:
            self.get_logger().warning(f"ignoring command: {exc}", throttle_duration_sec=5.0)
            return
        if np.isfinite(command).all():
            self._command = command
        else:
            self.get_logger().warning("ignoring a command with NaN/Inf", throttle_duration_sec=5.0)

    def _on_reset(self, request, response):
        # The seed parameter is re-read, so `ros2 param set /aloha_sim seed N` picks the next scene.
        self._seed = int(self.get_parameter("seed").value)
        self._reset()
        response.success, response.message = True, f"reset {self.params.task} with seed {self._seed}"
        return response

    def _poll(self) -> None:
        now = time.monotonic_ns()
        if now < self._next_ns:
            return
        self._tick()
        self._next_ns += self._period_ns
        if now - self._next_ns > MAX_CATCH_UP * self._period_ns:
            # Far behind (the machine cannot render this fast): restart the schedule, drop the backlog.
            self._next_ns = now + self._period_ns
            if time.monotonic() - self._behind_logged > 10.0:
                self._behind_logged = time.monotonic()
                self.get_logger().warning(f"sim cannot keep {1e9 / self._period_ns:g} Hz; skipping ticks")

    def _tick(self) -> None:
        start = time.perf_counter()
        action = self._command if self._command is not None else self._hold
        obs, reward = self.env.step(action)
        stamp = self.get_clock().now().nanoseconds  # observation time: the state just rendered
        self._publish(obs, stamp)
        self._reward_pub.publish(Int32(data=int(reward)))
        if self.env.success and not self._success:
            self._success = True
            self._success_pub.publish(Bool(data=True))
            self.get_logger().info(f"task {self.params.task} succeeded at sim step {self.env.t}")
        self._step_ms.append((time.perf_counter() - start) * 1e3)
        if len(self._step_ms) >= 100:  # every 4 s at 25 Hz
            ms = np.array(self._step_ms)
            self.get_logger().info(
                f"sim tick (physics + render + publish) mean {ms.mean():.1f} ms p50 {np.median(ms):.1f} ms "
                f"max {ms.max():.1f} ms"
            )
            self._step_ms.clear()

    def _publish(self, obs: dict, stamp: int) -> None:
        for cam, image in obs["images"].items():
            frame = f"{cam}_optical_frame"
            self._image_pubs[cam].publish(image_to_msg(image, stamp, frame))
            self._info_pubs[cam].publish(
                camera_info(self.env.model, CAMERA_TO_MUJOCO[cam], self.env.height, self.env.width, stamp, frame)
            )
        self._joint_pub.publish(joints_to_msg(obs["qpos"], stamp))

    def close(self) -> None:
        self.env.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(AlohaSimNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
