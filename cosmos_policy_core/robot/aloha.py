"""The bimanual ALOHA robot described once: cameras, joints, dimensions, control rate, poses, limits, topic names.

Everything else (sim, drivers, data, the executor, the ROS nodes) takes these facts from here.
"""
from __future__ import annotations

# Cameras the policy uses, by their ROS / HDF5 names (ALOHA's `cam_low` is not used by Cosmos Policy).
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")

# Joints: [left arm (6), left gripper, right arm (6), right gripper]; grippers normalised 0 closed .. 1 open.
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
SIDES = ("left", "right")
JOINT_NAMES = tuple(f"{side}_{j}" for side in SIDES for j in (*ARM_JOINTS, "gripper"))
GRIPPER_INDICES = (6, 13)
STATE_DIM = len(JOINT_NAMES)      # proprio (qpos) and action have the same 14-D layout
ACTION_DIM = STATE_DIM

CONTROL_HZ = 25.0                 # policy / executor rate (raw teleop at 50 Hz is resampled to this)
CHUNK_SIZE = 50                   # actions per chunk: 2 s at CONTROL_HZ

# Reference poses of one arm (rad). START_ARM_POSE is ALOHA's reset pose; the sleep pose is where an
# unpowered arm rests in its cradle (aloha_vx300s.yaml lists [0,-2.05,1.7,0,-2.0,0] in recent versions
# and [0,-1.80,1.55,0,-1.57,0] in older ones; the first is where ALOHA arms rest).
START_ARM_POSE = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)
SLEEP_ARM_POSE = (0.0, -2.05, 1.7, 0.0, -2.0, 0.0)

# ViperX 300 s (ALOHA follower) joint ranges in rad, the same in gym-aloha's MJCF and the Interbotix
# vx300s URDF: waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate.
VX300S_LOWER = (-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158)
VX300S_UPPER = (3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158)
# Normalised gripper (0 closed .. 1 open): a little room past both ends because demonstrations squeeze the
# leader past its calibrated "closed" to grip firmly.
GRIPPER_LOWER, GRIPPER_UPPER = -0.1, 1.1
# Speed limits: ~pi rad/s is the servo's rated no-load speed; 3 rad/s leaves the fast demo motions (which
# peak near 2 rad/s) untouched while a jump of a whole radian takes 8 ticks at 25 Hz.
ARM_MAX_VELOCITY = 3.0            # rad/s
GRIPPER_MAX_VELOCITY = 5.0        # normalised units/s: open -> closed in 0.2 s


def joint_lower_limits() -> tuple[float, ...]:
    """(14,) lower position limits in the policy layout (arm joints in rad, normalised grippers)."""
    return (*VX300S_LOWER, GRIPPER_LOWER) * 2


def joint_upper_limits() -> tuple[float, ...]:
    return (*VX300S_UPPER, GRIPPER_UPPER) * 2


def joint_max_velocities() -> tuple[float, ...]:
    return ((ARM_MAX_VELOCITY,) * len(ARM_JOINTS) + (GRIPPER_MAX_VELOCITY,)) * 2


# Default topic names of the robot's sensors and actuator, relative (ROS 2 resolves them in the node's
# namespace, so `namespace:=left_cell` moves a whole cell). The ROS package's `topics` module builds the
# graph's other names on these.
JOINT_STATES_TOPIC = "joint_states"
JOINT_COMMAND_TOPIC = "cosmos/joint_command"


def image_topic(camera: str) -> str:
    return f"{camera}/image_raw"


def camera_info_topic(camera: str) -> str:
    return f"{camera}/camera_info"


__all__ = [
    "CAMERAS", "ARM_JOINTS", "SIDES", "JOINT_NAMES", "GRIPPER_INDICES", "STATE_DIM", "ACTION_DIM", "CONTROL_HZ",
    "CHUNK_SIZE", "START_ARM_POSE", "SLEEP_ARM_POSE", "VX300S_LOWER", "VX300S_UPPER", "GRIPPER_LOWER",
    "GRIPPER_UPPER", "ARM_MAX_VELOCITY", "GRIPPER_MAX_VELOCITY", "joint_lower_limits", "joint_upper_limits",
    "joint_max_velocities", "JOINT_STATES_TOPIC", "JOINT_COMMAND_TOPIC", "image_topic", "camera_info_topic",
]
