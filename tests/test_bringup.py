"""The shared graph description, the launch file, config files and `cosmos-aloha bringup` process handling."""
from __future__ import annotations

import ast
import importlib.util
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from cosmos_aloha import graph

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "cosmos_aloha"
CLI = "import sys; from cosmos_policy_core.cli import main; sys.exit(main())"
HAS_LAUNCH = importlib.util.find_spec("launch") is not None and importlib.util.find_spec("launch_ros") is not None


def every_module(_module: str) -> bool:
    return True


def test_graph_module_imports_neither_rclpy_nor_launch():
    code = "import sys, cosmos_aloha.graph, cosmos_policy_core.cli.bringup; " \
           "print(sorted(m for m in ('rclpy', 'launch', 'launch_ros') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args, expected",
    [
        ({}, ["aloha_sim", "replay_chunks", "executor"]),
        ({"checkpoint": "/ckpt"}, ["aloha_sim", "policy", "executor"]),
        ({"checkpoint": "/ckpt", "planner": "true"}, ["aloha_sim", "policy", "planner", "executor"]),
        ({"planner": "true"}, ["aloha_sim", "replay_chunks", "executor"]),  # planner needs a checkpoint
        ({"sim": "false", "checkpoint": "/c"}, ["cameras", "aloha_driver", "policy", "executor"]),
        ({"sim": "false", "teleop": "true"}, ["cameras", "aloha_driver", "teleop"]),
        ({"replay": "false"}, ["aloha_sim", "executor"]),
        ({"record": "true"}, ["aloha_sim", "replay_chunks", "executor", "recorder"]),
    ],
)
def test_plan_selects_nodes_by_launch_arguments(args, expected):
    assert graph.plan(args, available=every_module).names == expected


def test_missing_node_modules_are_skipped_with_a_reason():
    plan = graph.plan({"checkpoint": "/ckpt"}, available=lambda m: m != "cosmos_aloha.policy_node")
    assert "policy" not in plan.names
    assert ("policy", "module cosmos_aloha.policy_node is not installed") in plan.skipped
    with pytest.raises(KeyError, match="unknown launch argument"):
        graph.plan({"sims": "true"})


def test_launch_arguments_reach_node_parameters():
    plan = graph.plan({"task": "insertion", "image_height": "224", "checkpoint": "/m", "engine": "onnx"},
                      available=every_module)
    nodes = {n.name: n for n in plan.nodes}
    assert nodes["aloha_sim"].parameters == {"task": "insertion", "seed": 0, "height": 224, "width": 640}
    assert nodes["policy"].parameters == {"checkpoint": "/m", "engine": "onnx", "temporal_ensemble": False,
                                          "return_future_images": True}
    assert nodes["executor"].parameters == {"temporal_ensemble": False}
    ensemble = {n.name: n for n in graph.plan({"checkpoint": "/m", "temporal_ensemble": "true"},
                                              available=every_module).nodes}
    assert ensemble["policy"].parameters["temporal_ensemble"] is True
    quiet = graph.plan({"checkpoint": "/m", "predicted_images": "false"}, available=every_module).nodes
    assert next(n for n in quiet if n.name == "policy").parameters["return_future_images"] is False
    assert "temporal_ensemble:=True" in graph.ros_arguments(ensemble["executor"])
    argv = graph.ros_arguments(nodes["aloha_sim"])
    assert argv[:3] == ["--ros-args", "-r", "__node:=aloha_sim"]
    assert "--params-file" in argv and "task:=insertion" in argv


def test_setup_py_entry_points_match_the_description():
    tree = ast.parse((PKG / "setup.py").read_text())
    entry = next(n.value for n in ast.walk(tree)
                 if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "NODES" for t in n.targets))
    nodes = ast.literal_eval(entry)
    for spec in graph.NODES:
        assert nodes[spec.executable] == f"{spec.module}:main", spec.name


def test_config_files_parse_and_match_node_parameters():
    """Every key in a node's YAML is a parameter the node declares (a typo would be silently ignored)."""
    pytest.importorskip("rclpy")
    from cosmos_aloha import aloha_sim_node, executor_node, replay_chunk_node

    declared = {"aloha_sim": aloha_sim_node.DEFAULTS, "executor": executor_node.DEFAULTS,
                "replay_chunks": replay_chunk_node.DEFAULTS}
    for name, defaults in declared.items():
        spec = next(s for s in graph.NODES if s.name == name)
        data = yaml.safe_load((PKG / "config" / spec.params_file).read_text())
        params = data[name]["ros__parameters"]
        assert set(params) == set(defaults), name
        for key, value in params.items():
            assert type(value) is type(defaults[key]) or isinstance(defaults[key], float), (name, key)
    executor = yaml.safe_load((PKG / "config" / "executor.yaml").read_text())["executor"]["ros__parameters"]
    from cosmos_policy_core.runtime.execution import SafetyConfig

    preset = SafetyConfig.aloha_vx300s()
    assert tuple(executor["joint_lower"]) == preset.lower and tuple(executor["max_velocity"]) == preset.max_velocity
    from types import SimpleNamespace

    assert executor_node.config_from_parameters(SimpleNamespace(**executor)).ensemble_decay is None
    ensemble = SimpleNamespace(**{**executor, "temporal_ensemble": True, "ensemble_decay": 0.02})
    assert executor_node.config_from_parameters(ensemble).ensemble_decay == 0.02


def test_rviz_config_shows_cameras_predictions_and_value():
    rviz = yaml.safe_load((PKG / "rviz" / graph.RVIZ_CONFIG).read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    topics = {d.get("Topic", {}).get("Value") for d in displays}
    for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist"):
        assert f"/{cam}/image_raw" in topics and f"/cosmos/predicted/{cam}" in topics
    assert "/cosmos/predicted/value_marker" in topics


@pytest.mark.skipif(not HAS_LAUNCH, reason="ROS 2 `launch`/`launch_ros` not installed (not on PyPI)")
def test_launch_file_node_list_equals_bringup():
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("bringup_launch", ROOT / "launch" / "bringup.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    context = LaunchContext()
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    nodes = [a for a in opaque.execute(context) if type(a).__name__ == "Node"]
    for node in nodes:
        node._perform_substitutions(context)  # node_name is only known after substitution
    assert [n.node_name.lstrip("/") for n in nodes] == graph.plan({}).names


def test_bringup_stops_all_nodes_on_sigterm(ros_env):
    """`cosmos-aloha bringup` (no --seconds): SIGTERM stops every node cleanly, output prefixed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "bringup", "--replay", "false",
         "--image-height", "96", "--image-width", "128"],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    end = time.monotonic() + 60  # imports + MuJoCo + discovery are slow on a loaded machine
    while time.monotonic() < end and not (any("[executor" in l and "state" in l for l in lines)
                                           and any("[aloha_sim" in l and "sim task" in l for l in lines)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "[aloha_sim" in out and "[executor" in out
    assert "stopped (signal); exit codes {'aloha_sim': 0, 'executor': 0}" in out
    assert "Traceback" not in out


def test_docs_table_lists_every_parameter_and_launch_argument():
    """docs/ros.md is the one parameter table: a YAML key or launch argument missing there fails here."""
    doc = (ROOT / "docs" / "ros.md").read_text()
    missing = []
    for path in sorted((PKG / "config").glob("*.yaml")):
        if path.name == "record_topics.yaml":  # a topic list for the recorder, not node parameters
            continue
        data = yaml.safe_load(path.read_text())
        for node, section in data.items():
            for key in section.get("ros__parameters", {}):
                if f"| {node} | `{key}` |" not in doc:
                    missing.append(f"{node}.{key}")
    for argument in graph.LAUNCH_ARGUMENTS:
        if f"`{argument.name}`" not in doc:
            missing.append(f"launch argument {argument.name}")
    assert not missing, f"add to the tables in docs/ros.md: {missing}"


def test_graph_environment_defaults_and_user_override():
    from cosmos_policy_core.cli.bringup import graph_environment

    env = graph_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["FASTDDS_BUILTIN_TRANSPORTS"] == "LARGE_DATA"
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"  # the user's choice wins
    profile = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile.name == "fastdds.xml" and "<segment_size>16777216</segment_size>" in profile.read_text()
