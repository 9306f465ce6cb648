"""QoS profiles, named once for the whole graph (cosmos_aloha.topics names each topic's profile)."""
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)

# Cameras and joint states. Most image loss was Fast DDS's shared-memory segment overflowing on the burst
# of three 480x640 frames (fixed by config/fastdds.xml, which bringup sets; then every QoS lost 0 %).
# Before that fix, on CPU-starved cores, BEST_EFFORT lost 24-42 % at depth 2 or 10, RELIABLE depth 2 lost
# 4-10 %, RELIABLE depth 5 lost nothing: a short reliable queue also rides out a subscriber's stalls.
# KEEP_LAST never blocks the publisher; consumers that want only the newest frame pick it by stamp.
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Subscribing to a third-party driver that publishes BEST_EFFORT (a RELIABLE subscription would get nothing).
SENSOR_QOS_BEST_EFFORT = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
# Chunks and commands: every message matters.
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Latched state (task, success, e-stop): late joiners get the last value.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# Heartbeats and status: a few in flight per node, reliable so a status change is not lost.
DIAGNOSTICS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# Observers that must see every command (graph_monitor, link_monitor, tests): the command profile with a 10 s
# queue at 25 Hz, so an observer waiting for a CPU on a busy machine catches up instead of losing commands.
OBSERVER_COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=250,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# Observers that count sensor messages (graph_monitor, link_monitor): the sensor profile with a 2 s queue, so
# that the rate they report is the publisher's, not the rate at which a busy observer got the CPU to take them.
OBSERVER_SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

PROFILES = {"sensor": SENSOR_QOS, "command": COMMAND_QOS, "latched": LATCHED_QOS, "diagnostics": DIAGNOSTICS_QOS}


def profile(topic) -> QoSProfile:
    """The QoS profile a `cosmos_aloha.topics.Topic` names."""
    return PROFILES[topic.qos]
