"""The one description of the cosmos_aloha ROS 2 graph: nodes, parameter files, remappings, when each runs.

Read by `launch/bringup.launch.py` (ros2 launch) and by `cosmos-aloha bringup` (one process per node where
ros2 launch is absent). Imports neither rclpy nor launch, so the ROS-free CLI can use it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

PACKAGE = "cosmos_aloha"

# Environment every process of the graph needs (and any observer: `ros2 topic echo`, rviz, bag record).
# Without LARGE_DATA, 480x640 images lose 14-70 % between processes with Fast DDS's default transports;
# the participant profile (config/fastdds.xml, see environment()) removes the remaining ~30 % burst loss.
GRAPH_ENV = {
    "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
}
FASTDDS_PROFILE = "fastdds.xml"


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


# Launch arguments, as strings (that is what `ros2 launch name:=value` gives).
LAUNCH_ARGUMENTS = (
    LaunchArgument("sim", "true", "MuJoCo sim (true) or the real ALOHA: cameras + aloha_driver (false)"),
    LaunchArgument("task", "transfer_cube", "sim task: transfer_cube or insertion"),
    LaunchArgument("seed", "0", "sim scene (object placement) seed"),
    LaunchArgument("checkpoint", "", "policy checkpoint directory or reference .pt; empty = no policy node"),
    LaunchArgument("engine", "torch", "denoiser backend: torch, compile, onnx, tensorrt"),
    LaunchArgument("planner", "false", "run the best-of-N planner node (needs a checkpoint)"),
    LaunchArgument("rviz", "false", "start rviz2 with the cosmos_aloha view"),
    LaunchArgument("replay", "auto", "scripted chunk source: auto (only without a checkpoint), true, false"),
    LaunchArgument("trajectory", "sine", "what the replay node plays: sine, or an episode .hdf5 / actions .npy"),
    LaunchArgument("teleop", "false", "leader-arm teleop instead of the policy executor (demonstrations)"),
    LaunchArgument("record", "false", "record the graph's topics (recorder node)"),
    LaunchArgument("image_height", "480", "sim camera height"),
    LaunchArgument("image_width", "640", "sim camera width"),
    LaunchArgument("predicted_images", "true",
                   "the policy decodes and publishes its predicted frames (for rviz; on a CPU it costs more than the chunk)"),
    LaunchArgument("temporal_ensemble", "false",
                   "executor averages every live chunk (ACT's temporal ensembling); the policy then queries every 5 steps"),
)
ARGUMENT_DEFAULTS = {a.name: a.default for a in LAUNCH_ARGUMENTS}

Args = Mapping[str, str]


def is_true(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _replay_enabled(a: Args) -> bool:
    if a["replay"].strip().lower() == "auto":
        return not a["checkpoint"] and not is_true(a["teleop"])
    return is_true(a["replay"])


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph. `module` is run as `python -m module` or as the package executable `name`."""

    name: str
    module: str
    enabled: Callable[[Args], bool]
    when: str                                   # the enabling rule in words (docs, --list)
    params_file: str | None = None              # in the package's config/ directory
    arg_parameters: Mapping[str, str] = field(default_factory=dict)  # ROS parameter <- launch argument
    remappings: tuple[tuple[str, str], ...] = ()

    @property
    def executable(self) -> str:
        return self.name


NODES = (
    NodeSpec("aloha_sim", "cosmos_aloha.aloha_sim_node", lambda a: is_true(a["sim"]), "sim:=true",
             "aloha_sim.yaml", {"task": "task", "seed": "seed", "height": "image_height", "width": "image_width"}),
    NodeSpec("cameras", "cosmos_aloha.cameras_node", lambda a: not is_true(a["sim"]), "sim:=false",
             "cameras.yaml"),
    NodeSpec("aloha_driver", "cosmos_aloha.aloha_driver_node", lambda a: not is_true(a["sim"]), "sim:=false",
             "aloha_driver.yaml"),
    NodeSpec("policy", "cosmos_aloha.policy_node",
             lambda a: bool(a["checkpoint"]) and not is_true(a["teleop"]), "checkpoint given",
             "policy.yaml", {"checkpoint": "checkpoint", "engine": "engine", "temporal_ensemble": "temporal_ensemble",
                             "return_future_images": "predicted_images"}),
    NodeSpec("planner", "cosmos_aloha.planner_node",
             lambda a: bool(a["checkpoint"]) and is_true(a["planner"]) and not is_true(a["teleop"]),
             "planner:=true and checkpoint given", "planner.yaml", {"checkpoint": "checkpoint", "engine": "engine"}),
    NodeSpec("replay_chunks", "cosmos_aloha.replay_chunk_node", _replay_enabled,
             "replay:=true, or replay:=auto without checkpoint", "replay_chunks.yaml", {"trajectory": "trajectory"}),
    NodeSpec("executor", "cosmos_aloha.executor_node", lambda a: not is_true(a["teleop"]), "teleop:=false",
             "executor.yaml", {"temporal_ensemble": "temporal_ensemble"}),
    NodeSpec("teleop", "cosmos_aloha.teleop_node", lambda a: is_true(a["teleop"]), "teleop:=true",
             "teleop.yaml"),
    NodeSpec("recorder", "cosmos_aloha.recorder_node", lambda a: is_true(a["record"]), "record:=true",
             "recorder.yaml"),
)
RVIZ_CONFIG = "cosmos_aloha.rviz"


@dataclass(frozen=True)
class PlannedNode:
    """A node to start: resolved parameter file and the parameter values taken from launch arguments."""

    spec: NodeSpec
    params_file: Path | None
    parameters: dict[str, object]

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class GraphPlan:
    nodes: tuple[PlannedNode, ...]
    skipped: tuple[tuple[str, str], ...]   # (node, why) for enabled nodes that cannot start here
    rviz: bool
    rviz_config: Path

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]


def package_dir() -> Path:
    """Where config/ and rviz/ live: the colcon install share dir if there is one, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory  # only on a ROS 2 install

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not installed by colcon (pip / editable checkout): use the source package
        return Path(__file__).resolve().parent.parent


def environment() -> dict[str, str]:
    """GRAPH_ENV plus FASTDDS_DEFAULT_PROFILES_FILE (16 MiB shared-memory segments), as defaults."""
    env = dict(GRAPH_ENV)
    profile = package_dir() / "config" / FASTDDS_PROFILE
    if profile.exists():
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _parameter_value(arg: str, value: str) -> object:
    if arg in ("image_height", "image_width", "seed"):
        return int(value)
    if arg in ("temporal_ensemble", "predicted_images"):
        return is_true(value)
    return value


def resolve_arguments(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    args = dict(ARGUMENT_DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in args:
            raise KeyError(f"unknown launch argument {key!r}; known: {sorted(args)}")
        args[key] = str(value)
    return args


def plan(overrides: Mapping[str, str] | None = None, available: Callable[[str], bool] = module_available) -> GraphPlan:
    """The nodes to start for these launch arguments, in start order (sensors first, executor after).

    A node whose rule holds but whose module is not installed (e.g. the policy node before the inference
    stack exists) is listed in `skipped` with the reason instead of failing the whole bringup.
    """
    args = resolve_arguments(overrides)
    base = package_dir()
    nodes, skipped = [], []
    for spec in NODES:
        if not spec.enabled(args):
            continue
        if not available(spec.module):
            skipped.append((spec.name, f"module {spec.module} is not installed"))
            continue
        params_file = base / "config" / spec.params_file if spec.params_file else None
        if params_file is not None and not params_file.exists():
            params_file = None
        parameters = {p: _parameter_value(a, args[a]) for p, a in spec.arg_parameters.items() if args[a] != ""}
        nodes.append(PlannedNode(spec, params_file, parameters))
    return GraphPlan(tuple(nodes), tuple(skipped), is_true(args["rviz"]), base / "rviz" / RVIZ_CONFIG)


def ros_arguments(node: PlannedNode) -> list[str]:
    """`--ros-args` for a standalone process: node name, parameter file, launch-argument parameters."""
    out = ["--ros-args", "-r", f"__node:={node.name}"]
    if node.params_file is not None:
        out += ["--params-file", str(node.params_file)]
    for key, value in node.parameters.items():
        out += ["-p", f"{key}:={value}"]
    for src, dst in node.spec.remappings:
        out += ["-r", f"{src}:={dst}"]
    return out
