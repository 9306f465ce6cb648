"""The graph split over two hosts (cosmos_aloha.roles, graph role arguments) and the observation clock-skew rule."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cosmos_aloha import graph, roles
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.sync import ObservationSynchronizer, SyncConfig

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "models" / "aloha_sim_transfer_cube_small"
MS = 1_000_000


def test_robot_and_gpu_roles_split_the_one_host_graph():
    everything = {"checkpoint": str(CKPT), "planner": "true", "record": "true"}
    one_host = graph.plan(everything).names
    robot = graph.plan({**everything, "role": "robot"}).names
    gpu = graph.plan({**everything, "role": "gpu"}).names
    assert set(gpu) == {"policy", "planner", "lifecycle_manager"}
    assert set(robot) == {"aloha_sim", "executor", "recorder", "lifecycle_manager"}
    assert set(robot) | set(gpu) == set(one_host)            # nothing lost, each host manages its own nodes
    real_robot = graph.plan({"sim": "false", "role": "robot"}).names
    assert {"cameras", "aloha_driver", "executor"} <= set(real_robot) and "replay_chunks" not in real_robot
    # Without a checkpoint the scripted chunk source stands in for the policy, on the policy's host.
    assert graph.plan({"role": "gpu"}).names == ["replay_chunks"]


def test_managers_of_each_host_bring_up_only_their_nodes():
    args = {"checkpoint": str(CKPT), "planner": "true"}
    for role, managed in (("robot", ["aloha_sim", "executor"]), ("gpu", ["policy", "planner"])):
        manager = next(n for n in graph.plan({**args, "role": role}).nodes if n.name == graph.MANAGER)
        assert manager.parameters["node_names"] == managed


def test_images_cross_hosts_compressed_unless_asked_otherwise():
    def taken(**args):
        nodes = {n.name: n.parameters for n in graph.plan({"checkpoint": str(CKPT), **args}).nodes}
        return nodes["policy"].get("image_transport")

    assert taken() is None                                   # one host: the parameter file's raw
    assert taken(role="gpu") == "compressed"
    assert taken(role="gpu", image_transport="raw") == "raw"
    assert taken(image_transport="compressed") == "compressed"
    sim = {n.name: n.parameters for n in graph.plan({"role": "robot", "jpeg_quality": "75"}).nodes}["aloha_sim"]
    assert sim["jpeg_quality"] == 75


def test_a_role_sets_discovery_and_the_two_host_profile(tmp_path):
    config = tmp_path / "config"
    assert roles.environment("all", config) == {}
    env = roles.environment("robot", config, peers="192.168.1.20; gpu-box.local",
                            current={"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                                     "FASTDDS_DEFAULT_PROFILES_FILE": str(config / "fastdds.xml")})
    assert env == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                   "FASTDDS_DEFAULT_PROFILES_FILE": str(config / roles.TWO_HOSTS_PROFILE),
                   "ROS_STATIC_PEERS": "192.168.1.20;gpu-box.local"}
    own = roles.environment("gpu", config, current={"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my_dds.xml"})
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in own        # a user's own profile is kept
    plan = graph.plan({"role": "gpu", "peers": "10.0.0.1"})
    assert plan.environment["ROS_STATIC_PEERS"] == "10.0.0.1"
    assert Path(plan.environment["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()


@pytest.mark.parametrize("args, words", [
    ({"role": "cloud"}, ["launch argument role", "'cloud'", "robot", "gpu"]),
    ({"peers": "10.0.0.1 10.0.0.2"}, ["launch argument peers", "';'"]),
    ({"image_transport": "png"}, ["launch argument image_transport", "'png'", "compressed"]),
    ({"jpeg_quality": "101"}, ["launch argument jpeg_quality", "1..100"]),
])
def test_bad_two_host_arguments_name_the_argument(args, words):
    with pytest.raises(graph.GraphArgumentError) as info:
        graph.plan(args)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_two_host_profile_keeps_shared_memory_and_adds_udp_buffers():
    import xml.etree.ElementTree as ET

    path = graph.package_dir() / "config" / roles.TWO_HOSTS_PROFILE
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(path).getroot()
    kinds = {t.find("d:type", ns).text for t in root.iter("{http://www.eprosima.com}transport_descriptor")}
    assert kinds == {"SHM", "UDPv4"}
    udp = next(t for t in root.iter("{http://www.eprosima.com}transport_descriptor")
               if t.find("d:type", ns).text == "UDPv4")
    assert int(udp.find("d:receiveBufferSize", ns).text) >= 4 * 2**20
    # Discovery is left to the ROS variables (ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_STATIC_PEERS).
    assert root.find(".//d:discovery_config", ns) is None and root.find(".//d:initialPeersList", ns) is None


def test_check_peers_and_roles_errors():
    assert roles.check_peers(" 10.0.0.2 , robot-pc ") == "10.0.0.2;robot-pc"
    assert roles.check_peers("") == ""
    with pytest.raises(ConfigError, match="neither an IP address nor a host name"):
        roles.check_peers("10.0.0.2/24")
    assert roles.runs_on("policy", "gpu") and not roles.runs_on("policy", "robot")
    assert roles.runs_on("lifecycle_manager", "robot") and roles.runs_on("aloha_sim", "all")


def _sync(max_future_ms=500.0):
    return ObservationSynchronizer(SyncConfig.from_ms(("cam", "joint_states"), "joint_states", 20.0, 500.0,
                                                      max_future_ms=max_future_ms))


def test_observations_stamped_ahead_of_this_hosts_clock_are_refused_as_clock_skew():
    sync = _sync()
    for stamp in (1000 * MS, 1040 * MS):
        sync.add("cam", stamp, f"frame {stamp}")
        sync.add("joint_states", stamp, f"joints {stamp}")
    assert sync.latest(1050 * MS).stamp_ns == 1040 * MS          # in sync
    # This host's clock 2 s behind the robot's: every observation looks 2 s ahead.
    assert sync.latest(1040 * MS - 2000 * MS) is None
    why = sync.why_not(1040 * MS - 2000 * MS)
    assert "clock skew" in why and "2000 ms ahead" in why and "chrony" in why
    # Ahead by 2 s: everything looks stale, and the message says a clock may be why.
    assert sync.latest(1040 * MS + 2000 * MS) is None
    assert "stale" in sync.why_not(3040 * MS) and "clock" in sync.why_not(3040 * MS)
    # Within the tolerance a newer set may be slightly ahead (clocks a few ms apart): still used.
    assert sync.latest(1040 * MS - 30 * MS).stamp_ns == 1040 * MS
    # The newest set ahead beyond the tolerance: nothing is used, not even an older set that looks recent here
    # (by the sensors' clock it is 960 ms old).
    sync.add("cam", 2000 * MS, "newest frame")
    sync.add("joint_states", 2000 * MS, "newest joints")
    assert sync.latest(1200 * MS) is None and "clock skew" in sync.why_not(1200 * MS)
    no_limit = _sync(max_future_ms=-1)
    no_limit.add("cam", 5000 * MS, "f")
    no_limit.add("joint_states", 5000 * MS, "j")
    assert no_limit.latest(0).stamp_ns == 5000 * MS
    with pytest.raises(ConfigError, match="max_future_ns"):
        SyncConfig(("a", "b"), "a", max_future_ns=-1)


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="ROS 2 `launch`/`launch_ros` not installed (../shared/ros2-cli)")
def test_launch_file_sets_the_roles_environment_before_its_nodes():
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable

    spec = importlib.util.spec_from_file_location("bringup_launch", REPO / "launch" / "bringup.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update(role="gpu", peers="10.0.0.1", checkpoint=str(CKPT))
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    actions = opaque.execute(context)
    kinds = [type(a).__name__ for a in actions]
    first_node = kinds.index("Node")
    for action in actions[:first_node]:
        if isinstance(action, SetEnvironmentVariable):
            action.visit(context)
    env = {k: context.environment.get(k) for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS",
                                                   "FASTDDS_DEFAULT_PROFILES_FILE")}
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET" and env["ROS_STATIC_PEERS"] == "10.0.0.1"
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith(roles.TWO_HOSTS_PROFILE)
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    for node in nodes:
        node._perform_substitutions(context)
    assert [n.node_name.rsplit("/", 1)[-1] for n in nodes] == ["policy", "lifecycle_manager"]
