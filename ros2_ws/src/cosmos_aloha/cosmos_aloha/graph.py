"""The one description of the cosmos_aloha ROS 2 graph: launch arguments, nodes, parameter files, supervision.

Read by `launch/bringup.launch.py` (ros2 launch) and by `cosmos-aloha bringup` (one process per node where
ros2 launch is absent). Imports neither rclpy nor launch, so the ROS-free CLI can use it.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from cosmos_aloha import roles
from cosmos_aloha.supervision import RestartBackoff
from cosmos_policy_core.engines.resolve import ENGINES
from cosmos_policy_core.errors import ConfigError

PACKAGE = "cosmos_aloha"

# Environment every process of the graph needs (and any observer: `ros2 topic echo`, rviz, bag record).
# Without LARGE_DATA, 480x640 images lose 14-70 % between processes with Fast DDS's default transports;
# the participant profile (config/fastdds.xml, see environment()) removes the remaining ~30 % burst loss.
GRAPH_ENV = {
    "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
}
FASTDDS_PROFILE = "fastdds.xml"

# Stopping: SIGINT, then SIGTERM after STOP_GRACE_S, then SIGKILL after STOP_KILL_S more (ros2 launch's
# sigterm_timeout / sigkill_timeout, and `cosmos-aloha bringup`). A node stops well inside it, model call
# in flight or not (node_runtime.run_node).
STOP_GRACE_S = 10.0
STOP_KILL_S = 5.0
# How a crashed node marked `respawn` comes back, in launch and in bringup.
RESPAWN = RestartBackoff()

BOOLEAN_WORDS = ("true", "false", "1", "0", "yes", "no", "on", "off")
TASKS = ("transfer_cube", "insertion")
# A ROS namespace: tokens of letters, digits and underscores, not starting with a digit, joined by "/".
_NAMESPACE = re.compile(r"^/?([A-Za-z_][A-Za-z0-9_]*)(/[A-Za-z_][A-Za-z0-9_]*)*/?$")


class GraphArgumentError(ConfigError):
    """A launch argument (or its `cosmos-aloha bringup` flag) has a value the graph cannot start with."""


def is_true(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def validate_namespace(value: str, argument: str = "namespace") -> str:
    """"" (the root) or "/a/b" for a valid ROS namespace; GraphArgumentError naming `argument` otherwise."""
    value = str(value).strip()
    if value in ("", "/"):
        return ""
    if not _NAMESPACE.match(value) or "//" in value:
        raise GraphArgumentError(
            f"{argument}:={value!r} is not a valid ROS namespace: use letters, digits and underscores, not "
            "starting with a digit, with '/' between parts (e.g. left_cell or /lab/left_cell)")
    return "/" + value.strip("/")


def _choice(*choices: str):
    def check(name: str, value: str) -> None:
        if value.strip().lower() not in choices:
            raise GraphArgumentError(f"launch argument {name}:={value!r} is not one of {', '.join(choices)}")
    return check


def _boolean(name: str, value: str) -> None:
    _choice(*BOOLEAN_WORDS)(name, value)


def _positive_int(name: str, value: str) -> None:
    if not value.strip().isdigit() or int(value) <= 0:
        raise GraphArgumentError(f"launch argument {name}:={value!r} must be a positive integer")


def _integer(name: str, value: str) -> None:
    try:
        int(value)
    except ValueError:
        raise GraphArgumentError(f"launch argument {name}:={value!r} must be an integer") from None


def _checkpoint(name: str, value: str) -> None:
    if value and not Path(value).exists():
        raise GraphArgumentError(
            f"launch argument {name}:={value!r}: no such checkpoint directory or file (relative paths are taken "
            f"from the directory the graph is started in, {Path.cwd()}); give the directory with config.json, "
            "or leave it empty for no policy")


def _trajectory(name: str, value: str) -> None:
    if value != "sine" and not Path(value).is_file():
        raise GraphArgumentError(f"launch argument {name}:={value!r} is neither 'sine' nor an existing "
                                 ".hdf5 episode / .npy actions file")


def _namespace(name: str, value: str) -> None:
    validate_namespace(value, name)


def _via(check: Callable[[str, str], object]) -> Callable[[str, str], None]:
    """A roles / jpeg check as a launch-argument check (GraphArgumentError naming the argument)."""
    def run(name: str, value: str) -> None:
        try:
            check(value, f"launch argument {name}")
        except ConfigError as exc:
            raise GraphArgumentError(str(exc)) from None
    return run


def _optional_positive_int(name: str, value: str) -> None:
    if value.strip():
        _positive_int(name, value)


def _quality(name: str, value: str) -> None:
    if value.strip() and (not value.strip().isdigit() or not 1 <= int(value) <= 100):
        raise GraphArgumentError(f"launch argument {name}:={value!r} must be an integer in 1..100 (or empty)")


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    check: Callable[[str, str], None] | None = None   # raises GraphArgumentError for a value it refuses


# Launch arguments, as strings (that is what `ros2 launch name:=value` gives).
LAUNCH_ARGUMENTS = (
    LaunchArgument("sim", "true", "MuJoCo sim (true) or the real ALOHA: cameras + aloha_driver (false)", _boolean),
    LaunchArgument("task", "transfer_cube", "sim task: transfer_cube or insertion", _choice(*TASKS)),
    LaunchArgument("seed", "0", "sim scene (object placement) seed", _integer),
    LaunchArgument("checkpoint", "", "policy checkpoint directory or reference .pt; empty = no policy node",
                   _checkpoint),
    LaunchArgument("engine", "torch", "denoiser backend: torch, compile, onnx, tensorrt", _choice(*ENGINES)),
    LaunchArgument("planner", "false", "run the best-of-N planner node (needs a checkpoint)", _boolean),
    LaunchArgument("rviz", "false", "start rviz2 with the cosmos_aloha view", _boolean),
    LaunchArgument("replay", "auto", "scripted chunk source: auto (only without a checkpoint), true, false",
                   _choice("auto", *BOOLEAN_WORDS)),
    LaunchArgument("trajectory", "sine", "what the replay node plays: sine, or an episode .hdf5 / actions .npy",
                   _trajectory),
    LaunchArgument("teleop", "false", "leader-arm teleop instead of the policy executor (demonstrations)", _boolean),
    LaunchArgument("record", "false", "record the graph's topics (recorder node)", _boolean),
    LaunchArgument("image_height", "480", "sim camera height", _positive_int),
    LaunchArgument("image_width", "640", "sim camera width", _positive_int),
    LaunchArgument("predicted_images", "true",
                   "the policy decodes and publishes its predicted frames (for rviz; on a CPU it costs more than the "
                   "chunk)", _boolean),
    LaunchArgument("denoising_steps", "", "denoising steps per policy chunk; empty = the checkpoint's deploy "
                   "section (1 keeps a chunk within a few control periods on a CPU)", _optional_positive_int),
    LaunchArgument("temporal_ensemble", "auto",
                   "auto: as the checkpoint's deploy section says; true: the executor averages every live chunk "
                   "(ACT's temporal ensembling) and the policy queries every few steps; false: whole chunks",
                   _choice("auto", *BOOLEAN_WORDS)),
    LaunchArgument("namespace", "", "ROS namespace of every node and topic (e.g. left_cell); empty = the root",
                   _namespace),
    LaunchArgument("role", "all", "all: the whole graph on this host; robot: sim or driver and cameras, executor, "
                   "recorder; gpu: policy and planner, on another host (docs/guide.md)", _via(roles.check_role)),
    LaunchArgument("peers", "", "with role robot / gpu: the other host's address for discovery (ROS_STATIC_PEERS; "
                   "';' between several); empty = multicast discovery on the subnet only", _via(roles.check_peers)),
    LaunchArgument("image_transport", "auto", "what the policy and planner subscribe: raw, compressed (JPEG on "
                   "<camera>/image_raw/compressed) or auto (compressed with role gpu, raw otherwise)",
                   _via(roles.check_image_transport)),
    LaunchArgument("jpeg_quality", "", "JPEG quality (1-100) of the compressed image topics; empty = the "
                   "parameter files' (90)", _quality),
)
ARGUMENT_DEFAULTS = {a.name: a.default for a in LAUNCH_ARGUMENTS}

Args = Mapping[str, str]


def _replay_enabled(a: Args) -> bool:
    if a["replay"].strip().lower() == "auto":
        return not a["checkpoint"] and not is_true(a["teleop"])
    return is_true(a["replay"])


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph. `module` is run as `python -m module` or as the package executable `name`.

    managed: a lifecycle node the lifecycle manager brings up (in NODES order) and watches.
    respawn: restarted with RESPAWN's back-off when it exits while the graph runs; a node without it
    stops the whole graph when it exits (a robot must not run with half its nodes).
    """

    name: str
    module: str
    enabled: Callable[[Args], bool]
    when: str                                   # the enabling rule in words (docs, --list)
    params_file: str | None = None              # in the package's config/ directory
    arg_parameters: Mapping[str, str] = field(default_factory=dict)  # ROS parameter <- launch argument
    remappings: tuple[tuple[str, str], ...] = ()
    managed: bool = False
    respawn: bool = False

    @property
    def executable(self) -> str:
        return self.name


MANAGER = "lifecycle_manager"
NODES = (
    NodeSpec("aloha_sim", "cosmos_aloha.aloha_sim_node", lambda a: is_true(a["sim"]), "sim:=true",
             "aloha_sim.yaml", {"task": "task", "seed": "seed", "height": "image_height", "width": "image_width"},
             managed=True),
    NodeSpec("cameras", "cosmos_aloha.cameras_node", lambda a: not is_true(a["sim"]), "sim:=false",
             "cameras.yaml", managed=True),
    NodeSpec("aloha_driver", "cosmos_aloha.aloha_driver_node", lambda a: not is_true(a["sim"]), "sim:=false",
             "aloha_driver.yaml", managed=True),
    NodeSpec("policy", "cosmos_aloha.policy_node",
             lambda a: bool(a["checkpoint"]) and not is_true(a["teleop"]), "checkpoint given",
             "policy.yaml", {"checkpoint": "checkpoint", "engine": "engine", "return_future_images": "predicted_images",
                             "num_steps": "denoising_steps"},
             managed=True, respawn=True),
    NodeSpec("planner", "cosmos_aloha.planner_node",
             lambda a: bool(a["checkpoint"]) and is_true(a["planner"]) and not is_true(a["teleop"]),
             "planner:=true and checkpoint given", "planner.yaml", {"checkpoint": "checkpoint", "engine": "engine"},
             managed=True, respawn=True),
    NodeSpec("replay_chunks", "cosmos_aloha.replay_chunk_node", _replay_enabled,
             "replay:=true, or replay:=auto without checkpoint", "replay_chunks.yaml", {"trajectory": "trajectory"},
             respawn=True),
    NodeSpec("executor", "cosmos_aloha.executor_node", lambda a: not is_true(a["teleop"]), "teleop:=false",
             "executor.yaml", managed=True),
    NodeSpec("teleop", "cosmos_aloha.teleop_node", lambda a: is_true(a["teleop"]), "teleop:=true",
             "teleop.yaml"),
    NodeSpec("recorder", "cosmos_aloha.recorder_node", lambda a: is_true(a["record"]), "record:=true",
             "recorder.yaml"),
    NodeSpec(MANAGER, "cosmos_aloha.lifecycle_manager_node", lambda a: True, "a managed node runs",
             "lifecycle_manager.yaml", respawn=True),
)
RVIZ_CONFIG = "cosmos_aloha.rviz"


@dataclass(frozen=True)
class PlannedNode:
    """A node to start: resolved parameter file and the parameter values taken from launch arguments."""

    spec: NodeSpec
    params_file: Path | None
    parameters: dict[str, object]
    namespace: str = ""    # "" = the root, else "/a/b"

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class GraphPlan:
    nodes: tuple[PlannedNode, ...]
    skipped: tuple[tuple[str, str], ...]   # (node, why) for enabled nodes that cannot start here
    rviz: bool
    rviz_config: Path
    namespace: str = ""
    # Variables this plan's processes need on top of environment() and override in it (roles.environment:
    # discovery and transports across hosts).
    environment: Mapping[str, str] = field(default_factory=dict)

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
    if arg in ("image_height", "image_width", "seed", "denoising_steps"):
        return int(value)
    if arg == "predicted_images":
        return is_true(value)
    if arg == "checkpoint":
        return str(Path(value).resolve())   # nodes may run elsewhere (launch, respawn): no relative paths
    return value


def resolve_arguments(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every launch argument's value, checked; GraphArgumentError names the first bad one."""
    args = dict(ARGUMENT_DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in args:
            raise GraphArgumentError(f"unknown launch argument {key!r}; known: {', '.join(sorted(args))}")
        args[key] = str(value)
    for argument in LAUNCH_ARGUMENTS:
        if argument.check is not None:
            argument.check(argument.name, args[argument.name])
    return args


def execution_parameters(args: Args) -> dict[str, dict[str, object]]:
    """Policy and executor parameters for chunk execution: the launch argument temporal_ensemble, with auto
    taken from the checkpoint's deploy section (DeploySettings)."""
    choice = args["temporal_ensemble"].strip().lower()
    if not args["checkpoint"]:
        return {"executor": {"temporal_ensemble": choice != "auto" and is_true(choice)}}
    from cosmos_policy_core.checkpoint import DeploySettings   # torch: only when a checkpoint is given

    deploy = DeploySettings.from_checkpoint(args["checkpoint"])
    ensemble = deploy.temporal_ensemble if choice == "auto" else is_true(choice)
    return {
        "policy": {"execution": "temporal_ensemble" if ensemble else "whole_chunks"},
        "executor": {"temporal_ensemble": ensemble, "ensemble_decay": float(deploy.ensemble_decay)},
    }


def plan(overrides: Mapping[str, str] | None = None, available: Callable[[str], bool] = module_available) -> GraphPlan:
    """The nodes to start for these launch arguments, in start order (sensors first, executor after, the
    lifecycle manager last). Checks every argument first: a bad one raises GraphArgumentError before
    anything starts.

    A node whose rule holds but whose module is not installed (e.g. the policy node before the inference
    stack exists) is listed in `skipped` with the reason instead of failing the whole bringup.
    """
    args = resolve_arguments(overrides)
    namespace = validate_namespace(args["namespace"])
    base = package_dir()
    execution = execution_parameters(args)
    images = roles.image_parameters(args["role"], args["image_transport"], args["jpeg_quality"])
    nodes, skipped = [], []
    for spec in NODES:
        if spec.name == MANAGER or not spec.enabled(args) or not roles.runs_on(spec.name, args["role"]):
            continue
        if not available(spec.module):
            skipped.append((spec.name, f"module {spec.module} is not installed"))
            continue
        parameters = {p: _parameter_value(a, args[a]) for p, a in spec.arg_parameters.items() if args[a] != ""}
        parameters.update(execution.get(spec.name, {}))
        parameters.update(images.get(spec.name, {}))
        if spec.managed:
            parameters["autostart"] = False    # the lifecycle manager brings it up, in order
        nodes.append(PlannedNode(spec, _params_file(base, spec), parameters, namespace))
    managed = [n.name for n in nodes if n.spec.managed]
    manager = next(s for s in NODES if s.name == MANAGER)
    if managed and available(manager.module):
        nodes.append(PlannedNode(manager, _params_file(base, manager), {"node_names": managed}, namespace))
    env = roles.environment(args["role"], base / "config", args["peers"], dict(os.environ))
    return GraphPlan(tuple(nodes), tuple(skipped), is_true(args["rviz"]), base / "rviz" / RVIZ_CONFIG, namespace, env)


def _params_file(base: Path, spec: NodeSpec) -> Path | None:
    path = base / "config" / spec.params_file if spec.params_file else None
    return path if path is not None and path.exists() else None


def ros_arguments(node: PlannedNode) -> list[str]:
    """`--ros-args` for a standalone process: node name, namespace, parameter file, launch-argument parameters."""
    out = ["--ros-args", "-r", f"__node:={node.name}"]
    if node.namespace:
        out += ["-r", f"__ns:={node.namespace}"]
    if node.params_file is not None:
        out += ["--params-file", str(node.params_file)]
    for key, value in node.parameters.items():
        out += ["-p", f"{key}:={_ros_value(value)}"]
    for src, dst in node.spec.remappings:
        out += ["-r", f"{src}:={dst}"]
    return out


def _ros_value(value: object) -> str:
    """A parameter value as `-p name:=value` parses it (YAML): lists as [a, b], strings as themselves."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_ros_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
