"""Scripted waypoint policies for the mocap ALOHA sim: transfer-cube and insertion.

Each arm follows timed waypoints of its fingertip centre (the point between the finger pads), linearly
interpolated per 50 Hz physics step and turned into a gripper-link mocap target. Tuned for this sim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cosmos_policy_core.errors import ConfigError

OPEN, CLOSED = 1.0, 0.0


def axis_angle_quat(axis, degrees: float) -> np.ndarray:
    """(4,) wxyz unit quaternion of a rotation by `degrees` about `axis`."""
    axis = np.asarray(axis, dtype=float)
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * axis / np.linalg.norm(axis)])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of wxyz quaternions (apply b, then a, for rotations of vectors)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vector `v` (3,) by unit quaternion `q` (wxyz)."""
    return quat_mul(quat_mul(q, np.concatenate([[0.0], v])), quat_conj(q))[1:]


# The gripper link's orientation with its joints at zero: the left gripper points +x (toward the
# middle of the table), the right one is turned half way round and points -x.
ARM_BASE_QUAT = (np.array([1.0, 0.0, 0.0, 0.0]), axis_angle_quat([0, 0, 1], 180.0))


def gripper_quat(arm: int, pitch_down: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """World orientation of gripper `arm` pointing to the middle, tilted `pitch_down` degrees toward
    the table and rolled `roll` degrees about its pointing axis."""
    base = ARM_BASE_QUAT[arm]
    # Tilting toward the table is a rotation about world y whose sign depends on which way it points.
    tilt = axis_angle_quat([0, 1, 0], pitch_down if arm == 0 else -pitch_down)
    return quat_mul(tilt, quat_mul(base, axis_angle_quat([1, 0, 0], roll)))


# Fingertip centre in the gripper-link frame: the finger pads sit ~9.4 cm ahead of the link origin
# along its pointing (x) axis; the extra centimetre puts the grasp point between the pad middles.
TCP_OFFSET = 0.105


def pointing_axis(quat: np.ndarray) -> np.ndarray:
    """(3,) world direction of the gripper link's x axis for a wxyz orientation."""
    w, x, y, z = quat
    return np.array([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)])


def link_from_tcp(tcp: np.ndarray, quat: np.ndarray) -> np.ndarray:
    return tcp - TCP_OFFSET * pointing_axis(quat)


def tcp_from_link(link: np.ndarray, quat: np.ndarray) -> np.ndarray:
    return link + TCP_OFFSET * pointing_axis(quat)


@dataclass(frozen=True)
class Waypoint:
    t: int                 # physics control step (50 Hz) at which the pose is reached
    xyz: np.ndarray        # fingertip-centre position (m)
    quat: np.ndarray       # gripper-link orientation, wxyz
    gripper: float         # normalised finger command, 0 closed .. 1 open


def interpolate(waypoints: list[Waypoint], t: float) -> np.ndarray:
    """(8,) gripper-link xyz + quat + gripper at time `t`: fingertip pose linear between the waypoints
    around `t` (held before the first and after the last), then expressed as a link target."""
    a = b = waypoints[0] if t <= waypoints[0].t else waypoints[-1]
    for w0, w1 in zip(waypoints[:-1], waypoints[1:]):
        if w0.t <= t <= w1.t:
            a, b = w0, w1
            break
    f = 0.0 if b.t == a.t else float(np.clip((t - a.t) / (b.t - a.t), 0.0, 1.0))
    # Same hemisphere before blending so the linear quaternion path is the short way round.
    qb = b.quat if np.dot(a.quat, b.quat) >= 0 else -b.quat
    quat = a.quat + (qb - a.quat) * f
    quat = quat / np.linalg.norm(quat)
    tcp = a.xyz + (b.xyz - a.xyz) * f
    return np.concatenate([link_from_tcp(tcp, quat), quat, [a.gripper + (b.gripper - a.gripper) * f]])


Replan = Callable[[int, np.ndarray, list, list], tuple[list, list]]


@dataclass
class ScriptedPolicy:
    """Bimanual waypoint follower: `policy(t, object_state) -> (16,)` mocap action for AlohaMocapEnv.

    Open loop, except at the steps in `replan_at`, where `replan(t, object_poses, left, right)` sees
    the objects (e.g. where the cube actually sits in the right hand) and returns new waypoints.
    """

    left: list[Waypoint]
    right: list[Waypoint]
    replan_at: tuple[int, ...] = ()
    replan: Replan | None = None

    def __call__(self, t: int, object_state: np.ndarray | None = None) -> np.ndarray:
        if self.replan is not None and t in self.replan_at:
            if object_state is None:
                raise ConfigError(f"this scripted policy replans at step {t} and needs the object poses")
            self.left, self.right = self.replan(t, object_state, self.left, self.right)
        return np.concatenate([interpolate(self.left, t), interpolate(self.right, t)])

    @property
    def duration(self) -> int:
        return max(self.left[-1].t, self.right[-1].t)


def _start(initial_mocap: np.ndarray, arm: int) -> tuple[np.ndarray, np.ndarray]:
    link, quat = initial_mocap[arm, :3], initial_mocap[arm, 3:]
    return tcp_from_link(link, quat), quat


CUBE_REST_Z = 0.02     # the cube (4 cm) resting on the table; it spawns at z = 0.05 and drops
GRASP_BACKOFF = 0.02   # right fingertip centre this far behind the cube centre, along the fingers


def transfer_cube_policy(initial_mocap: np.ndarray, object_poses: np.ndarray) -> ScriptedPolicy:
    """Right arm picks the cube and offers it in the middle; the left arm takes it and pulls away.

    initial_mocap: (2, 7) start poses of the left and right gripper links; object_poses: (1, 7) cube.
    """
    (tcp_l, quat_l), (tcp_r, quat_r) = _start(initial_mocap, 0), _start(initial_mocap, 1)
    pick = gripper_quat(1, pitch_down=60)
    # Grip the cube with the fingertips only, so half of it sticks out for the left hand to take.
    box = np.array([object_poses[0, 0], object_poses[0, 1], CUBE_REST_Z]) - GRASP_BACKOFF * pointing_axis(pick)
    meet = np.array([0.0, 0.5, 0.22])
    take = gripper_quat(0, roll=90)
    W = Waypoint
    right = [
        W(0, tcp_r, quat_r, CLOSED),
        W(80, box + [0.0, 0.0, 0.08], pick, OPEN),            # above the cube
        W(120, box + [0.0, 0.0, 0.0], pick, OPEN),            # fingers around it
        W(140, box, pick, OPEN),
        W(165, box, pick, CLOSED),                            # grasp
        W(200, box + [0.0, 0.0, 0.1], pick, CLOSED),          # lift clear of the table
        W(240, meet, pick, CLOSED),                           # offer it in the middle
        W(320, meet, pick, CLOSED),
        W(340, meet, pick, OPEN),                             # let go once the left arm holds it
        W(375, meet + [0.1, 0.0, 0.05], pick, OPEN),
        W(400, meet + [0.1, 0.0, 0.05], pick, OPEN),
    ]
    left = _left_takeover(tcp_l, quat_l, meet, take)

    def aim_at_cube(t: int, objects: np.ndarray, left: list, right: list) -> tuple[list, list]:
        # The cube sits wherever the grasp left it in the right hand: take it there.
        return _left_takeover(tcp_l, quat_l, objects[0, :3], take), right

    return ScriptedPolicy(left, right, replan_at=(HANDOVER_REPLAN_T,), replan=aim_at_cube)


TAKE_DEPTH = 0.015           # left fingertip centre this far short of the cube centre
HANDOVER_REPLAN_T = 245      # the right arm has held the cube still in the middle since step 240


def _left_takeover(tcp_l, quat_l, cube: np.ndarray, take: np.ndarray) -> list[Waypoint]:
    W = Waypoint
    return [
        W(0, tcp_l, quat_l, CLOSED),
        W(120, cube + [-0.15, 0.0, 0.0], take, OPEN),         # wait beside the meeting point
        W(250, cube + [-0.15, 0.0, 0.0], take, OPEN),
        W(295, cube + [-TAKE_DEPTH, 0.0, 0.0], take, OPEN),   # slowly: the wrist servos are soft
        W(315, cube + [-TAKE_DEPTH, 0.0, 0.0], take, CLOSED),
        W(345, cube + [-TAKE_DEPTH, 0.0, 0.0], take, CLOSED),
        W(380, cube + [-0.12, 0.0, 0.0], take, CLOSED),       # pull it away
        W(400, cube + [-0.12, 0.0, 0.0], take, CLOSED),
    ]


PEG_REST_Z = 0.01        # peg (2 cm square) resting on the table
SOCKET_REST_Z = 0.022    # socket centre when its bottom wall rests on the table
PEG_HALF_LENGTH = 0.06
GRIP_OFF_CENTRE = 0.03   # grasp points 3 cm from the objects' centres, away from the other hand
PIN_HALF_LENGTH = 0.04   # the pin fills the socket's middle; the peg must reach past its end
INSERT_REPLAN_T = 300    # both objects lifted and held still at the meeting point since step 280
CORRECT_REPLAN_T = 380   # the peg has waited in front of the socket since step 350


def insertion_policy(initial_mocap: np.ndarray, object_poses: np.ndarray) -> ScriptedPolicy:
    """Left arm picks the socket, right arm the peg, each near the end away from the other hand; they
    meet above the table, then the right hand turns and moves the peg onto the socket's axis (as the
    objects are actually held) and pushes it onto the pin.

    initial_mocap: (2, 7) start poses; object_poses: (2, 7) peg then socket.
    """
    # Grip each object off-centre, away from the meeting point, so the two hands never collide.
    peg = np.array([object_poses[0, 0] + GRIP_OFF_CENTRE, object_poses[0, 1], PEG_REST_Z])
    socket = np.array([object_poses[1, 0] - GRIP_OFF_CENTRE, object_poses[1, 1], SOCKET_REST_Z])
    (tcp_l, quat_l), (tcp_r, quat_r) = _start(initial_mocap, 0), _start(initial_mocap, 1)
    pick_l = gripper_quat(0, pitch_down=60)
    pick_r = gripper_quat(1, pitch_down=60)
    hold_socket = np.array([-0.1, 0.5, 0.2])
    hold_peg = np.array([0.15, 0.5, 0.2])
    W = Waypoint
    left = [
        W(0, tcp_l, quat_l, CLOSED),
        W(100, socket + [0.0, 0.0, 0.08], pick_l, OPEN),
        W(140, socket, pick_l, OPEN),
        W(160, socket, pick_l, OPEN),
        W(185, socket, pick_l, CLOSED),
        W(230, socket + [0.0, 0.0, 0.1], pick_l, CLOSED),
        W(280, hold_socket, pick_l, CLOSED),
        W(500, hold_socket, pick_l, CLOSED),
    ]
    right_to_meet = [
        W(0, tcp_r, quat_r, CLOSED),
        W(100, peg + [0.0, 0.0, 0.08], pick_r, OPEN),
        W(140, peg, pick_r, OPEN),
        W(160, peg, pick_r, OPEN),
        W(185, peg, pick_r, CLOSED),
        W(230, peg + [0.0, 0.0, 0.1], pick_r, CLOSED),
        W(280, hold_peg, pick_r, CLOSED),
        W(INSERT_REPLAN_T, hold_peg, pick_r, CLOSED),
    ]
    entry = PIN_HALF_LENGTH + PEG_HALF_LENGTH      # peg centre to socket centre when touching the pin

    def line_up_peg(t: int, objects: np.ndarray, left: list, right: list) -> tuple[list, list]:
        # First pass: turn the hand so the peg is parallel to the socket (grasps tilt both a few
        # degrees) and place it in front of the socket's mouth. Second pass: correct by the peg's
        # measured miss (the arms sag under load by more than the socket's clearance).
        peg_now, socket_now = objects[0, :3], objects[1, :3]
        axis = quat_rotate(objects[1, 3:], np.array([1.0, 0.0, 0.0]))   # socket axis, toward the peg
        mouth = socket_now + (entry + 0.04) * axis
        if t == INSERT_REPLAN_T:
            turn = quat_mul(objects[1, 3:], quat_conj(objects[0, 3:]))
            quat = quat_mul(turn, pick_r)
            grip_to_peg = quat_rotate(turn, peg_now - hold_peg)
            pre = mouth - grip_to_peg
            waiting = pre
        else:
            quat = right[-1].quat
            waiting = right[-3].xyz
            pre = waiting + (mouth - peg_now)
        push = pre - 0.07 * axis
        return left, right_to_meet + [
            W(350, waiting, quat, CLOSED),
            W(CORRECT_REPLAN_T, waiting, quat, CLOSED),
            W(400, pre, quat, CLOSED),
            W(470, push, quat, CLOSED),
            W(500, push, quat, CLOSED),
        ]

    right = right_to_meet + [W(500, hold_peg, pick_r, CLOSED)]
    return ScriptedPolicy(left, right, replan_at=(INSERT_REPLAN_T, CORRECT_REPLAN_T), replan=line_up_peg)


SCRIPTED_POLICIES = {"transfer_cube": transfer_cube_policy, "insertion": insertion_policy}


def make_scripted_policy(task: str, initial_mocap: np.ndarray, object_poses: np.ndarray) -> ScriptedPolicy:
    if task not in SCRIPTED_POLICIES:
        raise ConfigError(f"no scripted policy for task {task!r}; have {sorted(SCRIPTED_POLICIES)}")
    return SCRIPTED_POLICIES[task](np.asarray(initial_mocap), np.asarray(object_poses))
