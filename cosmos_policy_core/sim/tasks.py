"""The two ALOHA sim tasks as data: model files, object poses, reward from contacts, task strings.

One place for everything task-specific, shared by the joint-space env, the mocap env and the demos.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot import aloha

# Arm reset pose, 8 per arm (6 joints + the two finger slides), as ALOHA / ACT / gym-aloha.
START_ARM_POSE = np.array([*aloha.START_ARM_POSE, 0.02239, -0.02239] * 2)
MAX_REWARD = 4

# Contact geoms named by the reward rules (gym-aloha's model names).
LEFT_FINGER = "vx300s_left/10_left_gripper_finger"
RIGHT_FINGER = "vx300s_right/10_right_gripper_finger"
SOCKET_WALLS = ("socket-1", "socket-2", "socket-3", "socket-4")

Contacts = frozenset  # of frozenset({geom_name_a, geom_name_b})


def _touch(contacts: Contacts, a: str, b: str) -> bool:
    return frozenset((a, b)) in contacts


def transfer_cube_reward(contacts: Contacts) -> int:
    """0..4: right finger touches cube, lifts it, left finger touches it, left holds it off the table."""
    right = _touch(contacts, "red_box", RIGHT_FINGER)
    left = _touch(contacts, "red_box", LEFT_FINGER)
    on_table = _touch(contacts, "red_box", "table")
    reward = 0
    if right:
        reward = 1
    if right and not on_table:
        reward = 2
    if left:
        reward = 3
    if left and not on_table:
        reward = 4
    return reward


def insertion_reward(contacts: Contacts) -> int:
    """0..4: both grippers touch, both lift, peg touches socket in the air, peg touches the pin."""
    right = _touch(contacts, "red_peg", RIGHT_FINGER)
    left = any(_touch(contacts, wall, LEFT_FINGER) for wall in SOCKET_WALLS)
    peg_on_table = _touch(contacts, "red_peg", "table")
    socket_on_table = any(_touch(contacts, wall, "table") for wall in SOCKET_WALLS)
    peg_in_socket = any(_touch(contacts, "red_peg", wall) for wall in SOCKET_WALLS)
    reward = 0
    if left and right:
        reward = 1
    if left and right and not peg_on_table and not socket_on_table:
        reward = 2
    if peg_in_socket and not peg_on_table and not socket_on_table:
        reward = 3
    if _touch(contacts, "red_peg", "pin"):
        reward = 4
    return reward


@dataclass(frozen=True)
class SimTask:
    """One task: its models, its free objects with their sampling box, its reward and its words."""

    name: str
    description: str                     # the language instruction stored with every episode
    xml: str                             # joint-space model in gym_aloha/assets
    ee_xml: str                          # mocap (end-effector) model in gym_aloha/assets
    objects: tuple[str, ...]             # free joints, in sampling order
    ranges: tuple[np.ndarray, ...]       # per object (3, 2) low/high of x, y, z
    reward_geoms: tuple[str, ...]        # geoms the reward looks at (contacts among others ignored)
    episode_len_50hz: int                # physics control steps of one scripted demo
    stages: tuple[str, ...]              # what reward 1..MAX_REWARD means, in words

    @property
    def episode_len_25hz(self) -> int:
        return self.episode_len_50hz // 2

    def reward(self, contacts: Contacts) -> int:
        return transfer_cube_reward(contacts) if self.name == "transfer_cube" else insertion_reward(contacts)

    def sample_object_poses(self, seed: int | None) -> np.ndarray:
        """(n_objects, 7) xyz + wxyz poses; same draws as gym-aloha's `sample_*_pose(seed)`."""
        rng = np.random.RandomState(seed)
        poses = []
        for box in self.ranges:
            xyz = rng.uniform(box[:, 0], box[:, 1])
            poses.append(np.concatenate([xyz, [1.0, 0.0, 0.0, 0.0]]))
        return np.stack(poses)


TASKS: dict[str, SimTask] = {
    "transfer_cube": SimTask(
        name="transfer_cube",
        description="pick up the red cube with the right arm and hand it over to the left arm",
        xml="bimanual_viperx_transfer_cube.xml",
        ee_xml="bimanual_viperx_end_effector_transfer_cube.xml",
        objects=("red_box_joint",),
        ranges=(np.array([[0.0, 0.2], [0.4, 0.6], [0.05, 0.05]]),),
        reward_geoms=("red_box", LEFT_FINGER, RIGHT_FINGER, "table"),
        episode_len_50hz=400,
        stages=("the right finger touches the cube", "the right gripper lifts it", "the left finger touches it",
                "the left gripper holds it off the table"),
    ),
    "insertion": SimTask(
        name="insertion",
        description="pick up the red peg and the blue socket and insert the peg into the socket",
        xml="bimanual_viperx_insertion.xml",
        ee_xml="bimanual_viperx_end_effector_insertion.xml",
        objects=("red_peg_joint", "blue_socket_joint"),
        ranges=(
            np.array([[0.1, 0.2], [0.4, 0.6], [0.05, 0.05]]),
            np.array([[-0.2, -0.1], [0.4, 0.6], [0.05, 0.05]]),
        ),
        reward_geoms=("red_peg", "pin", "table", LEFT_FINGER, RIGHT_FINGER, *SOCKET_WALLS),
        episode_len_50hz=500,
        stages=("both grippers touch their objects", "both lift them", "the peg touches the socket in the air",
                "the peg touches the pin"),
    ),
}


def get_task(name: str) -> SimTask:
    if name not in TASKS:
        raise ConfigError(f"unknown sim task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def checkpoint_task(checkpoint: str | Path) -> str | None:
    """The sim task a checkpoint was trained for: the one task whose description it has a text embedding for;
    None when it has embeddings for none of them or for several."""
    from cosmos_policy_core.checkpoint import TEXT_FILE, read_text_embeddings

    path = Path(checkpoint) / TEXT_FILE
    if not path.is_file():
        return None
    known = set(read_text_embeddings(path))
    matches = [name for name, task in TASKS.items() if task.description in known]
    return matches[0] if len(matches) == 1 else None


def assets_dir() -> Path:
    """gym-aloha's MuJoCo models (we load its XML and meshes; its env classes are not used)."""
    try:
        import gym_aloha
    except ImportError as exc:
        raise ConfigError("the ALOHA sim needs gym-aloha for its models: pip install -e '.[sim]'") from exc
    return Path(gym_aloha.__file__).parent / "assets"
