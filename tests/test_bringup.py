"""The shared graph description, the launch file, generated config files and `cosmos-aloha bringup` process handling."""
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

from cosmos_aloha import graph, topics
from cosmos_aloha.supervision import RestartBackoff

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "cosmos_aloha"
CLI = "import sys; from cosmos_policy_core.cli import main; sys.exit(main())"
HAS_LAUNCH = importlib.util.find_spec("launch") is not None and importlib.util.find_spec("launch_ros") is not None
MANAGER = graph.MANAGER


def every_module(_module: str) -> bool:
    return True


@pytest.fixture
def ckpt(tmp_path) -> str:
    """A checkpoint path that exists (the plan checks it); no deploy section: whole chunks."""
    path = tmp_path / "ckpt"
    path.mkdir()
    return str(path)


def test_graph_module_imports_neither_rclpy_nor_launch():
    code = "import sys, cosmos_aloha.graph, cosmos_aloha.topics, cosmos_policy_core.cli.bringup; " \
           "print(sorted(m for m in ('rclpy', 'launch', 'launch_ros', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args, expected",
    [
        ({}, ["aloha_sim", "replay_chunks", "executor", MANAGER]),
        ({"checkpoint": "CKPT"}, ["aloha_sim", "policy", "executor", MANAGER]),
        ({"checkpoint": "CKPT", "planner": "true"}, ["aloha_sim", "policy", "planner", "executor", MANAGER]),
        ({"planner": "true"}, ["aloha_sim", "replay_chunks", "executor", MANAGER]),  # planner needs a checkpoint
        ({"sim": "false", "checkpoint": "CKPT"}, ["cameras", "aloha_driver", "policy", "executor", MANAGER]),
        ({"sim": "false", "teleop": "true"}, ["cameras", "aloha_driver", "teleop", MANAGER]),
        ({"replay": "false"}, ["aloha_sim", "executor", MANAGER]),
        ({"record": "true"}, ["aloha_sim", "replay_chunks", "executor", "recorder", MANAGER]),
    ],
)
def test_plan_selects_nodes_by_launch_arguments(args, expected, ckpt):
    args = {k: ckpt if v == "CKPT" else v for k, v in args.items()}
    plan = graph.plan(args, available=every_module)
    assert plan.names == expected
    manager = plan.nodes[-1]
    # The manager brings up the lifecycle nodes in start order; they wait for it (autostart false).
    assert manager.parameters["node_names"] == [n.name for n in plan.nodes if n.spec.managed]
    for node in plan.nodes:
        assert node.parameters.get("autostart", True) is (not node.spec.managed)


def test_missing_node_modules_are_skipped_with_a_reason(ckpt):
    plan = graph.plan({"checkpoint": ckpt}, available=lambda m: m != "cosmos_aloha.policy_node")
    assert "policy" not in plan.names
    assert ("policy", "module cosmos_aloha.policy_node is not installed") in plan.skipped


@pytest.mark.parametrize("args, words", [
    ({"sims": "true"}, ["unknown launch argument 'sims'"]),
    ({"engine": "tensorflow"}, ["engine:='tensorflow'", "torch, compile, onnx, tensorrt"]),
    ({"sim": "maybe"}, ["sim:='maybe'"]),
    ({"task": "stack_cups"}, ["task:='stack_cups'", "transfer_cube"]),
    ({"image_height": "-4"}, ["image_height:='-4'", "positive integer"]),
    ({"checkpoint": "models/no_such_model"}, ["checkpoint:='models/no_such_model'", "no such checkpoint"]),
    ({"namespace": "left-cell"}, ["namespace:='left-cell'", "not a valid ROS namespace"]),
    ({"namespace": "3cell"}, ["namespace:='3cell'"]),
    ({"namespace": "a//b"}, ["namespace:='a//b'"]),
    ({"temporal_ensemble": "sometimes"}, ["temporal_ensemble:='sometimes'"]),
    ({"denoising_steps": "0"}, ["denoising_steps:='0'", "positive integer"]),
    ({"denoising_steps": "ten"}, ["denoising_steps:='ten'"]),
])
def test_bad_launch_arguments_name_the_argument_and_what_is_wrong(args, words):
    with pytest.raises(graph.GraphArgumentError) as info:
        graph.plan(args, available=every_module)
    for word in words:
        assert word in str(info.value)


def test_a_bad_argument_starts_nothing_under_bringup(ros_env):
    """Exit 2 with the message, before a single node process exists."""
    for flags, word in ((["--namespace", "left cell"], "namespace:='left cell'"),
                        (["--checkpoint", "/nonexistent/model"], "checkpoint:='/nonexistent/model'"),
                        (["--engine", "tensorflow"], "engine:='tensorflow'")):
        out = subprocess.run([sys.executable, "-c", CLI, "bringup", *flags, "--seconds", "5"], env=ros_env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stdout + out.stderr
        assert word in out.stderr and "Traceback" not in out.stderr
        assert "(pid" not in out.stdout + out.stderr and "bringup:" not in out.stdout   # no node started


def test_namespace_moves_every_node(ckpt):
    plan = graph.plan({"namespace": "left_cell", "checkpoint": ckpt}, available=every_module)
    assert plan.namespace == "/left_cell" and {n.namespace for n in plan.nodes} == {"/left_cell"}
    argv = graph.ros_arguments(plan.nodes[0])
    assert argv[:5] == ["--ros-args", "-r", f"__node:={plan.nodes[0].name}", "-r", "__ns:=/left_cell"]
    assert graph.validate_namespace("/lab/left_cell/") == "/lab/left_cell" and graph.validate_namespace("/") == ""
    assert topics.absolute(topics.JOINT_STATES.name, "/left_cell") == "/left_cell/joint_states"


def test_launch_arguments_reach_node_parameters(ckpt):
    plan = graph.plan({"task": "insertion", "image_height": "224", "checkpoint": ckpt, "engine": "onnx"},
                      available=every_module)
    nodes = {n.name: n for n in plan.nodes}
    assert nodes["aloha_sim"].parameters == {"task": "insertion", "seed": 0, "height": 224, "width": 640,
                                             "autostart": False}
    assert nodes["policy"].parameters == {"checkpoint": ckpt, "engine": "onnx", "return_future_images": True,
                                          "execution": "whole_chunks", "autostart": False}
    assert nodes["executor"].parameters == {"temporal_ensemble": False, "ensemble_decay": 0.01, "autostart": False}
    ensemble = {n.name: n for n in graph.plan({"checkpoint": ckpt, "temporal_ensemble": "true"},
                                              available=every_module).nodes}
    assert ensemble["policy"].parameters["execution"] == "temporal_ensemble"
    assert ensemble["executor"].parameters["temporal_ensemble"] is True
    quiet = graph.plan({"checkpoint": ckpt, "predicted_images": "false", "denoising_steps": "1"},
                       available=every_module).nodes
    assert next(n for n in quiet if n.name == "policy").parameters["return_future_images"] is False
    assert next(n for n in quiet if n.name == "policy").parameters["num_steps"] == 1   # else the deploy section's
    assert "temporal_ensemble:=true" in graph.ros_arguments(ensemble["executor"])
    assert f"node_names:=[{', '.join(n for n in ensemble if n != MANAGER)}]" in graph.ros_arguments(ensemble[MANAGER])
    argv = graph.ros_arguments(nodes["aloha_sim"])
    assert argv[:3] == ["--ros-args", "-r", "__node:=aloha_sim"]
    assert "--params-file" in argv and "task:=insertion" in argv
    relative = graph.plan({"checkpoint": "."}, available=every_module)   # paths reach nodes absolute
    assert next(n for n in relative.nodes if n.name == "policy").parameters["checkpoint"] == str(Path.cwd())


def test_setup_py_entry_points_match_the_description():
    tree = ast.parse((PKG / "setup.py").read_text())
    entry = next(n.value for n in ast.walk(tree)
                 if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "NODES" for t in n.targets))
    nodes = ast.literal_eval(entry)
    for spec in graph.NODES:
        assert nodes[spec.executable] == f"{spec.module}:main", spec.name


def test_config_files_and_docs_table_are_generated_from_the_declarations():
    """config/<node>.yaml and docs/ros.md's parameter table equal what each node declares (one source)."""
    pytest.importorskip("rclpy")
    from cosmos_aloha import parameters

    stale = [str(path.relative_to(ROOT)) for path, text in parameters.expected_files(ROOT / "docs" / "ros.md").items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"regenerate with `python -m cosmos_aloha.parameters --write`: {stale}"
    for name, _, params, file in parameters.node_files():
        data = yaml.safe_load((PKG / "config" / file).read_text())[name]["ros__parameters"]
        assert list(data) == [p.name for p in params] and all(p.description for p in params), name
        assert data == {p.name: p.default for p in params}, name
    from types import SimpleNamespace

    from cosmos_aloha import executor_node
    from cosmos_policy_core.runtime.execution import SafetyConfig

    executor = yaml.safe_load((PKG / "config" / "executor.yaml").read_text())["executor"]["ros__parameters"]
    preset = SafetyConfig.aloha_vx300s()
    assert tuple(executor["joint_lower"]) == preset.lower and tuple(executor["max_velocity"]) == preset.max_velocity
    assert executor_node.config_from_parameters(SimpleNamespace(**executor)).ensemble_decay is None
    ensemble = SimpleNamespace(**{**executor, "temporal_ensemble": True, "ensemble_decay": 0.02})
    assert executor_node.config_from_parameters(ensemble).ensemble_decay == 0.02


def test_docs_list_every_launch_argument():
    doc = (ROOT / "docs" / "ros.md").read_text()
    missing = [a.name for a in graph.LAUNCH_ARGUMENTS if f"| `{a.name}` | `{a.default or chr(34) * 2}` |" not in doc]
    assert not missing, f"add to the launch argument table in docs/ros.md (name and default): {missing}"


def test_rviz_config_shows_cameras_predictions_plans_and_values():
    rviz = yaml.safe_load((PKG / "rviz" / graph.RVIZ_CONFIG).read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    shown = {d.get("Topic", {}).get("Value") for d in displays}
    for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist"):
        for topic in (topics.image(cam), topics.predicted_image(cam), topics.predicted_image(cam, topics.PLAN_PREDICTED)):
            assert topic.name in shown, topic.name
    assert topics.VALUE_MARKER.name in shown
    assert not [t for t in shown if t and t.startswith("/")], "rviz topics must be relative (namespace)"


def test_record_preset_uses_the_graph_topic_names():
    preset = yaml.safe_load((PKG / "config" / "record_topics.yaml").read_text())
    expected = [*(topics.image(c) for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")),
                topics.JOINT_STATES, topics.JOINT_COMMAND, topics.EPISODE]
    assert [(t["name"], t["type"]) for t in preset["topics"]] == [(t.name, t.type) for t in expected]
    assert preset["episode_topic"] == topics.EPISODE.name


@pytest.mark.skipif(not HAS_LAUNCH, reason="ROS 2 `launch`/`launch_ros` not installed (../shared/ros2-cli)")
def test_launch_file_node_list_equals_bringup():
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("bringup_launch", ROOT / "launch" / "bringup.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    context = LaunchContext()
    context.launch_configurations["namespace"] = "left_cell"
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    nodes = [a for a in opaque.execute(context) if type(a).__name__ == "Node"]
    for node in nodes:
        node._perform_substitutions(context)  # node_name is only known after substitution
    assert [n.node_name for n in nodes] == [f"/left_cell/{name}" for name in graph.plan({"namespace": "left_cell"}).names]


def test_restart_backoff_doubles_up_to_its_limit_and_resets_after_a_healthy_run():
    rule = RestartBackoff(first_s=1.0, factor=2.0, max_s=5.0, reset_after_s=60.0)
    assert [rule.delay(k) for k in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert rule.next_attempt(2, ran_s=3.0) == 3 and rule.next_attempt(2, ran_s=61.0) == 0


class _Exited:
    """A stand-in process that has exited with `code`."""

    def __init__(self, code):
        self.returncode, self.pid = code, 0

    def poll(self):
        return self.returncode


def test_bringup_restarts_a_respawn_node_with_backoff_and_stops_on_any_other_exit(ckpt, monkeypatch):
    from cosmos_policy_core.cli import bringup as cli

    plan = graph.plan({"checkpoint": ckpt}, available=every_module)
    runner = cli.Bringup(plan, out=open("/dev/null", "w"))
    runner.nodes = [cli.NodeProcess(n.name, ["x"], n.spec.respawn) for n in plan.nodes]
    spawned = []
    monkeypatch.setattr(runner, "_spawn", lambda node: (spawned.append(node.name),
                                                        setattr(node, "process", None),
                                                        setattr(node, "restart_at_s", None)))
    policy = next(n for n in runner.nodes if n.name == "policy")
    policy.process, policy.started_s = _Exited(-9), 100.0
    runner.supervise(101.0)
    assert policy.restart_at_s == 101.0 + graph.RESPAWN.delay(1) and not spawned and not runner.stopped_by
    runner.supervise(policy.restart_at_s)
    assert spawned == ["policy"]
    executor = next(n for n in runner.nodes if n.name == "executor")
    executor.process = _Exited(1)
    runner.supervise(200.0)
    assert runner.stopped_by == "exit of executor (code 1)"


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
    end = time.monotonic() + 90  # imports + MuJoCo + discovery are slow on a loaded machine
    while time.monotonic() < end and not any("[lifecycle_manager" in line and "executor: activated" in line
                                             for line in lines):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=40)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "aloha_sim: activated" in out and "[executor" in out
    assert "stopped (signal); exit codes {'aloha_sim': 0, 'executor': 0, 'lifecycle_manager': 0}" in out
    assert "Traceback" not in out


def test_graph_environment_defaults_and_user_override():
    from cosmos_policy_core.cli.bringup import graph_environment

    env = graph_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["FASTDDS_BUILTIN_TRANSPORTS"] == "LARGE_DATA"
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"  # the user's choice wins
    profile = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile.name == "fastdds.xml" and "<segment_size>16777216</segment_size>" in profile.read_text()
