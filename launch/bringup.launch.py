"""ros2 launch cosmos_aloha bringup.launch.py sim:=true checkpoint:=... engine:=... planner:=true rviz:=true

Starts the nodes that `cosmos_aloha.graph.plan()` selects (the same description `cosmos-aloha bringup`
uses), one process each, with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, localhost discovery and the
package's Fast DDS profile (config/fastdds.xml: 16 MiB shared-memory segments) by default.
Every other process on this graph (rviz, `ros2 topic echo`, `ros2 bag record`) needs the same variables.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cosmos_aloha import graph


def _nodes(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph.LAUNCH_ARGUMENTS}
    plan = graph.plan(values)
    actions = [LogInfo(msg=f"cosmos_aloha: not starting {name}: {why}") for name, why in plan.skipped]
    for node in plan.nodes:
        parameters = ([str(node.params_file)] if node.params_file else []) + (
            [node.parameters] if node.parameters else [])
        actions.append(Node(
            package=graph.PACKAGE,
            executable=node.spec.executable,
            name=node.name,
            parameters=parameters,
            remappings=list(node.spec.remappings),
            output="screen",
        ))
    if plan.rviz:
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                            arguments=["-d", str(plan.rviz_config)], output="screen"))
    return actions


def generate_launch_description():
    # The user's own setting wins (os.environ), as in `cosmos-aloha bringup`.
    env = [SetEnvironmentVariable(k, os.environ.get(k, v)) for k, v in graph.environment().items()]
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in graph.LAUNCH_ARGUMENTS]
    return LaunchDescription(env + declared + [OpaqueFunction(function=_nodes)])
