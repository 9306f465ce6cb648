"""ros2 launch cosmos_aloha bringup.launch.py sim:=true checkpoint:=... engine:=... planner:=true rviz:=true

Starts the nodes that `cosmos_aloha.graph.plan()` selects (the same description `cosmos-aloha bringup`
uses), one process each, under the `namespace` argument, with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA,
localhost discovery and the package's Fast DDS profile (config/fastdds.xml: 16 MiB shared-memory segments)
by default. Every other process on this graph (rviz, `ros2 topic echo`, `ros2 bag record`) needs the same
variables. The lifecycle manager brings the managed nodes up in order; a crashed policy, planner or replay
node is restarted with graph.RESPAWN's back-off; any other node's exit stops the launch. A bad argument
stops it before anything starts.
"""
import os
import time

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
    TimerAction,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cosmos_aloha import graph


def _node(planned, attempt: int = 0, delay_s: float = 0.0) -> list:
    """The node's process and what happens when it exits: a restart after the back-off, or the end of the launch."""
    parameters = ([str(planned.params_file)] if planned.params_file else []) + (
        [planned.parameters] if planned.parameters else [])
    action = Node(
        package=graph.PACKAGE,
        executable=planned.spec.executable,
        name=planned.name,
        namespace=planned.namespace or None,
        parameters=parameters,
        remappings=list(planned.spec.remappings),
        output="screen",
        sigterm_timeout=str(graph.STOP_GRACE_S),
        sigkill_timeout=str(graph.STOP_KILL_S),
    )
    started = time.monotonic() + delay_s

    def on_exit(event, context):
        if context.is_shutdown:
            return None
        why = f"{planned.name} exited (code {event.returncode})"
        if not planned.spec.respawn:
            return [EmitEvent(event=Shutdown(reason=f"{why}; stopping the graph (a robot must not run with "
                                                    "half its nodes)"))]
        following = graph.RESPAWN.next_attempt(attempt, time.monotonic() - started)
        delay = graph.RESPAWN.delay(following)
        return [LogInfo(msg=f"cosmos_aloha: {why}; restarting it in {delay:g} s (restart {following + 1} in a row)"),
                TimerAction(period=delay, actions=_node(planned, following, delay))]

    return [action, RegisterEventHandler(OnProcessExit(target_action=action, on_exit=on_exit))]


def _nodes(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph.LAUNCH_ARGUMENTS}
    plan = graph.plan(values)   # GraphArgumentError: launch reports it and starts nothing
    # A role's discovery and transports (cosmos_aloha.roles), set before any node of this launch starts.
    actions = [SetEnvironmentVariable(k, v) for k, v in plan.environment.items()]
    actions += [LogInfo(msg=f"cosmos_aloha: not starting {name}: {why}") for name, why in plan.skipped]
    for planned in plan.nodes:
        actions += _node(planned)
    if plan.rviz:
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", namespace=plan.namespace or None,
                            arguments=["-d", str(plan.rviz_config)], output="screen"))
    return actions


def generate_launch_description():
    # The user's own setting wins (os.environ), as in `cosmos-aloha bringup`.
    env = [SetEnvironmentVariable(k, os.environ.get(k, v)) for k, v in graph.environment().items()]
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in graph.LAUNCH_ARGUMENTS]
    return LaunchDescription(env + declared + [OpaqueFunction(function=_nodes)])
