"""`aloha_sim` lifecycle node: MuJoCo ALOHA (AlohaSimEnv) behind the real robot's topics, physics 50 Hz, sensors 25 Hz.

Configure builds the sim; while active it steps, publishes and executes the latest cosmos/joint_command (held
between commands); inactive, time stands still. Reset service, latched success topic.
"""
from __future__ import annotations

import math
import time

import numpy as np
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import Bool, Int32
from std_srvs.srv import Trigger

from cosmos_aloha import topics
from cosmos_aloha.conversions import joints_to_msg, msg_to_joints, ns_to_stamp
from cosmos_aloha.image_transport import PUBLISHER_PARAMETERS, ImagePublisher
from cosmos_aloha.managed_node import ManagedNode
from cosmos_aloha.node_runtime import run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.robot.gripper import GripperConstants
from cosmos_policy_core.runtime.jpeg import check_quality
from cosmos_policy_core.sim.env import CAMERA_TO_MUJOCO, PHYSICS_HZ, AlohaSimEnv

MAX_CATCH_UP = 5  # periods a late sim may run back-to-back to catch up before it skips
PARAMETERS = (
    Param("task", "transfer_cube", "transfer_cube or insertion (launch argument task)"),
    Param("seed", 0, "object placement; re-read by cosmos/sim/reset (`ros2 param set /aloha_sim seed N`)"),
    Param("height", 480, "camera image height (launch argument image_height)"),
    Param("width", 640, "camera image width (launch argument image_width)"),
    Param("cameras", list(aloha.CAMERAS), "cameras rendered and published"),
    Param("publish_hz", aloha.CONTROL_HZ,
          "images + joint states; each tick holds the command for 50 / publish_hz physics steps (physics 50 Hz); "
          "a late tick is followed by an early one (up to 5 periods of catch-up), so sim time follows wall time"),
    Param("gripper", "original_aloha", "gripper normalisation constants of the sim (gym-aloha = ACT)"),
    *PUBLISHER_PARAMETERS,
)


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


class AlohaSimNode(ManagedNode):
    def __init__(self):
        super().__init__("aloha_sim", PARAMETERS)
        p = self.p
        hz = float(p.publish_hz)
        if hz <= 0 or PHYSICS_HZ % hz:
            raise ConfigError(f"publish_hz must divide the {PHYSICS_HZ} Hz physics rate (25, 10, ...), got {hz}")
        self.env: AlohaSimEnv | None = None
        self._command: np.ndarray | None = None
        self._seed = int(p.seed)
        self._step_ms: list[float] = []
        self._period_ns = int(round(1e9 / hz))
        self._next_ns = time.monotonic_ns()
        self._behind_logged = 0.0
        self._pubs: list = []
        self.create_subscription(JointState, topics.JOINT_COMMAND.name, self._on_command, profile(topics.JOINT_COMMAND))
        self.create_service(Trigger, topics.SIM_RESET.name, self._on_reset)
        # An rcl timer drops a whole period whenever one tick overruns it, so one slow render (software
        # GL on a busy CPU) costs a frame. Instead poll at a quarter period and keep a schedule: a late
        # tick is followed by an early one and sim time stays with wall time on average.
        self.create_timer(0.25 / hz, self._poll, clock=self.steady_clock)

    # -- lifecycle --------------------------------------------------------------------------------------
    def on_configure(self, state):
        p = self.p
        try:
            self.env = AlohaSimEnv(task=p.task, height=p.height, width=p.width, cameras=tuple(p.cameras),
                                   control_hz=int(float(p.publish_hz)), gripper=GripperConstants.load(p.gripper))
            check_quality(p.jpeg_quality)
        except ConfigError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        make = self.create_lifecycle_publisher
        self._image_pubs = {c: ImagePublisher(make, topics.image(c).name, profile(topics.image(c)),
                                              int(p.jpeg_quality), bool(p.compressed)) for c in p.cameras}
        self._info_pubs = {c: make(CameraInfo, topics.camera_info(c).name, profile(topics.camera_info(c)))
                           for c in p.cameras}
        self._joint_pub = make(JointState, topics.JOINT_STATES.name, profile(topics.JOINT_STATES))
        self._success_pub = make(Bool, topics.SIM_SUCCESS.name, profile(topics.SIM_SUCCESS))
        self._reward_pub = make(Int32, topics.SIM_REWARD.name, profile(topics.SIM_REWARD))
        self._pubs = [*(pub for image in self._image_pubs.values() for pub in image.publishers),
                      *self._info_pubs.values(), self._joint_pub, self._success_pub,
                      self._reward_pub]
        self._reset(publish=False)
        self.get_logger().info(
            f"sim task {p.task} seed {self._seed}: {len(p.cameras)} cameras {p.height}x{p.width} at "
            f"{float(p.publish_hz):g} Hz, physics {PHYSICS_HZ} Hz")
        return super().on_configure(state)

    def on_activate(self, state):
        result = super().on_activate(state)
        self._next_ns = time.monotonic_ns()
        self._success_pub.publish(Bool(data=self._success))
        self._publish(self._last_obs, self.get_clock().now().nanoseconds)
        return result

    def release(self) -> None:
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        self._pubs = []
        if self.env is not None:
            self.env.close()
            self.env = None

    def _reset(self, publish: bool = True) -> None:
        obs = self.env.reset(seed=self._seed)
        # Until a command arrives the arms hold the reset pose (sim actions share the qpos gripper scale).
        self._hold = obs["qpos"].copy()
        self._command = None
        self._success = False
        self._last_obs = obs
        if publish and self.active:
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
        if self.env is None:
            response.success, response.message = False, "the sim is not configured"
            return response
        # The seed parameter is re-read, so `ros2 param set /aloha_sim seed N` picks the next scene.
        self._seed = int(self.get_parameter("seed").value)
        self._reset()
        response.success, response.message = True, f"reset {self.p.task} with seed {self._seed}"
        return response

    def _poll(self) -> None:
        if not self.active:
            return
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
        self._last_obs = obs
        self._publish(obs, stamp)
        self._reward_pub.publish(Int32(data=int(reward)))
        if self.env.success and not self._success:
            self._success = True
            self._success_pub.publish(Bool(data=True))
            self.get_logger().info(f"task {self.p.task} succeeded at sim step {self.env.t}")
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
            self._image_pubs[cam].publish(image, stamp, frame)
            self._info_pubs[cam].publish(
                camera_info(self.env.model, CAMERA_TO_MUJOCO[cam], self.env.height, self.env.width, stamp, frame)
            )
        self._joint_pub.publish(joints_to_msg(obs["qpos"], stamp))

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def main(argv: list[str] | None = None) -> int:
    return run_node(AlohaSimNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
