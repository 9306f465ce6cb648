"""The graph split over two hosts: which nodes each role runs and the environment each side needs.

`role` robot runs the sim or the driver and cameras, the executor and the recorder; `gpu` runs the policy and
the planner (and the scripted chunk source standing in for them); `all` runs everything on one host. ROS-free:
graph, launch and `cosmos-aloha bringup` read it.
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from cosmos_policy_core.errors import ConfigError

ROLES = ("all", "robot", "gpu")
# Nodes of the policy side; every other node (the lifecycle manager too: each host manages its own) runs on
# the robot. The scripted chunk source stands in for the policy, so it goes where the policy would be.
GPU_NODES = ("policy", "planner", "replay_chunks")
TWO_HOSTS_PROFILE = "fastdds_two_hosts.xml"
IMAGE_TRANSPORTS = ("auto", "raw", "compressed")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def check_role(value: str, argument: str = "role") -> str:
    if value not in ROLES:
        raise ConfigError(f"{argument} is {value!r}; choose all (one host), robot (sim or driver, cameras, executor, "
                          "recorder) or gpu (policy and planner)")
    return value


def runs_on(node: str, role: str) -> bool:
    """Whether `node` (a graph node name) starts on a host with this role."""
    if check_role(role) == "all":
        return True
    return (node in GPU_NODES) == (role == "gpu")


def check_image_transport(value: str, argument: str = "image_transport") -> str:
    if value not in IMAGE_TRANSPORTS:
        raise ConfigError(f"{argument} is {value!r}; choose auto (compressed with role gpu, raw otherwise), raw or "
                          "compressed")
    return value


def image_transport(value: str, role: str) -> str:
    """What the policy and planner subscribe: auto = JPEG across hosts (role gpu), raw on one host."""
    if check_image_transport(value) == "auto":
        return "compressed" if check_role(role) == "gpu" else "raw"
    return value


def image_parameters(role: str, transport: str, jpeg_quality: str) -> dict[str, dict[str, object]]:
    """Per node, the image settings the launch arguments change: what publishers encode (jpeg_quality; ""
    keeps the parameter files') and what the policy and planner take (image_transport; auto on one host keeps
    the parameter files' raw)."""
    quality = {"jpeg_quality": int(jpeg_quality)} if str(jpeg_quality).strip() else {}
    taken = dict(quality)
    if transport != "auto" or check_role(role) == "gpu":
        taken["image_transport"] = image_transport(transport, role)
    out = {node: dict(quality) for node in ("aloha_sim", "cameras") if quality}
    out.update({node: dict(taken) for node in ("policy", "planner") if taken})
    return out


def check_peers(value: str, argument: str = "peers") -> str:
    """ROS_STATIC_PEERS form: addresses or host names separated by ';' (or ','); "" = none."""
    peers = [p.strip() for p in re.split(r"[;,]", str(value)) if p.strip()]
    for peer in peers:
        try:
            ipaddress.ip_address(peer)
        except ValueError:
            if not _HOSTNAME.match(peer):
                raise ConfigError(f"{argument}: {peer!r} is neither an IP address nor a host name; give the other "
                                  "host's address, several separated by ';' (e.g. 192.168.1.20)") from None
    return ";".join(peers)


def environment(role: str, config_dir: Path, peers: str = "", current: dict | None = None) -> dict[str, str]:
    """Variables a role sets for every process of its side (on top of the single-host GRAPH_ENV).

    robot / gpu: discovery on the subnet (a LOCALHOST left from a one-host setup would hide the other
    host), the two-host Fast DDS profile unless the user points at a profile of their own, and the
    peers (ROS_STATIC_PEERS) when given. all: nothing.
    """
    if check_role(role) == "all":
        return {}
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    own_profile = (current or {}).get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    if not own_profile or Path(own_profile).parent == Path(config_dir):
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(Path(config_dir) / TWO_HOSTS_PROFILE)
    peers = check_peers(peers)
    if peers:
        env["ROS_STATIC_PEERS"] = peers
    return env


__all__ = ["ROLES", "GPU_NODES", "TWO_HOSTS_PROFILE", "IMAGE_TRANSPORTS", "check_role", "runs_on",
           "check_image_transport", "image_transport", "image_parameters", "check_peers", "environment"]
