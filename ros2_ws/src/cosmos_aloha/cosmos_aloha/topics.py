"""Every topic and service of the graph, named once: relative name, message type, QoS profile, what it carries.

Names are relative, so ROS 2 resolves them in each node's namespace (`namespace:=left_cell` moves a whole
cell). ROS-free: nodes, launch, bringup, the recorder profile, rviz config and docs tests all read it. The
robot's own topics (joint states, commands, cameras) come from `cosmos_policy_core.robot.aloha`.
"""
from __future__ import annotations

from dataclasses import dataclass

from cosmos_policy_core.robot import aloha


@dataclass(frozen=True)
class Topic:
    name: str          # relative; a leading "~/" is the node's private namespace
    type: str          # ROS interface name, e.g. sensor_msgs/msg/Image
    qos: str           # profile name in cosmos_aloha.qos.PROFILES
    description: str


@dataclass(frozen=True)
class Service:
    name: str
    type: str
    description: str


# -- the robot (sim, or cameras + driver) ------------------------------------------------------------
JOINT_STATES = Topic(aloha.JOINT_STATES_TOPIC, "sensor_msgs/msg/JointState", "sensor",
                     "14 joint positions, policy layout, grippers normalised; stamped with the reading")
JOINT_COMMAND = Topic(aloha.JOINT_COMMAND_TOPIC, "sensor_msgs/msg/JointState", "command",
                      "14 commanded positions at the control rate; only the executor (or teleop) publishes")


def image(camera: str) -> Topic:
    return Topic(aloha.image_topic(camera), "sensor_msgs/msg/Image", "sensor", f"{camera} frames, rgb8")


def camera_info(camera: str) -> Topic:
    return Topic(aloha.camera_info_topic(camera), "sensor_msgs/msg/CameraInfo", "sensor", f"{camera} intrinsics")


def arm_joint_states(robot_name: str) -> Topic:
    """One arm in the Interbotix xs_sdk layout (9 entries), e.g. follower_left/joint_states."""
    return Topic(f"{robot_name}/joint_states", "sensor_msgs/msg/JointState", "sensor",
                 f"{robot_name} in the xs_sdk layout (arm, gripper angle, two finger positions)")


SIM_SUCCESS = Topic("cosmos/sim/success", "std_msgs/msg/Bool", "latched", "the sim task succeeded (latched)")
SIM_REWARD = Topic("cosmos/sim/reward", "std_msgs/msg/Int32", "command", "the sim task's reward, each tick")
SIM_RESET = Service("cosmos/sim/reset", "std_srvs/srv/Trigger", "reset the sim scene (seed parameter re-read)")

# -- chunks and predictions --------------------------------------------------------------------------
ACTION_CHUNK = Topic("cosmos/action_chunk", "trajectory_msgs/msg/JointTrajectory", "command",
                     "the policy's chunk, stamped with its observation time, points 1 / control rate apart")
PLAN_CHUNK = Topic("cosmos/plan/action_chunk", "trajectory_msgs/msg/JointTrajectory", "command",
                   "the planner's chosen chunk, published only within its deadline")
PREDICTED = "cosmos/predicted"            # the policy's predictions
PLAN_PREDICTED = "cosmos/plan/predicted"  # the planner's


def predicted_image(camera: str, prefix: str = PREDICTED) -> Topic:
    return Topic(f"{prefix}/{camera}", "sensor_msgs/msg/Image", "sensor",
                 f"predicted {camera} frame at the chunk's end, rgb8, stamped with the observation time")


def predicted_value(prefix: str = PREDICTED) -> Topic:
    return Topic(f"{prefix}/value", "std_msgs/msg/Float32", "command", "predicted value (0..1) of the chunk")


VALUE_MARKER = Topic(f"{PREDICTED}/value_marker", "visualization_msgs/msg/Marker", "command",
                     "the policy's (id 0) and planner's (id 1) value as rviz text markers")
CHUNK_TIMING = Topic("~/chunk_timing", "diagnostic_msgs/msg/DiagnosticArray", "command",
                     "per chunk: where the observation -> chunk time went (ms), stamped like the chunk")

# -- execution and safety ----------------------------------------------------------------------------
ESTOP_REQUEST = Topic("cosmos/estop/request", "std_msgs/msg/Bool", "latched",
                      "true latches the executor's e-stop, false clears it (`cosmos-aloha estop`)")
ESTOP_ENGAGED = Topic("cosmos/estop/engaged", "std_msgs/msg/Bool", "latched", "the executor's e-stop state")
ESTOP = Service("cosmos/estop", "std_srvs/srv/Trigger", "latch the e-stop (hold position)")
ESTOP_CLEAR = Service("cosmos/estop_clear", "std_srvs/srv/Trigger", "clear the e-stop")
REANCHOR = Service("cosmos/executor/reanchor", "std_srvs/srv/Trigger",
                   "forget chunks and hold the next measured position (after a sim reset)")
DIAGNOSTICS = Topic("diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "diagnostics",
                    "every managed node's heartbeat and status, the lifecycle manager's events")

# -- demonstrations ----------------------------------------------------------------------------------
EPISODE = Topic("cosmos/episode", "std_msgs/msg/String", "latched",
                "episode markers, JSON {event, task, success, sim, stamp_ns}")
TELEOP_START = Service("cosmos/teleop/start_episode", "std_srvs/srv/Trigger", "start an episode")
TELEOP_STOP = Service("cosmos/teleop/stop_episode", "std_srvs/srv/SetBool", "stop it (data: success)")
RECORDER_START = Service("cosmos/recorder/start", "std_srvs/srv/Trigger", "start an episode")
RECORDER_STOP = Service("cosmos/recorder/stop", "std_srvs/srv/Trigger", "stop it, successful")
RECORDER_STOP_FAILURE = Service("cosmos/recorder/stop_failure", "std_srvs/srv/Trigger", "stop it, failed")


def sensors(cameras=aloha.CAMERAS) -> tuple[Topic, ...]:
    """What a policy observes: the camera images and the joint states."""
    return (*(image(c) for c in cameras), JOINT_STATES)


def absolute(name: str, namespace: str = "") -> str:
    """`name` resolved in `namespace` ("" or "/" = the root), as `ros2 topic` shows it."""
    ns = namespace.strip("/")
    return f"/{ns}/{name}" if ns else f"/{name}"
