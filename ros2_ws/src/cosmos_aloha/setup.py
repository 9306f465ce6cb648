"""ament_python package `cosmos_aloha`: thin rclpy nodes over `cosmos_policy_core`.

Built by colcon in a ROS 2 workspace (`colcon build --packages-select cosmos_aloha`);
the same sources are installed by the repository's pyproject for plain pip environments.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "cosmos_aloha"

# One entry point per node; the module names are the single source of truth shared with
# cosmos_aloha.graph (launch file and `cosmos-aloha bringup`).
NODES = {
    "aloha_sim": "cosmos_aloha.aloha_sim_node:main",
    "cameras": "cosmos_aloha.cameras_node:main",
    "aloha_driver": "cosmos_aloha.aloha_driver_node:main",
    "policy": "cosmos_aloha.policy_node:main",
    "planner": "cosmos_aloha.planner_node:main",
    "executor": "cosmos_aloha.executor_node:main",
    "teleop": "cosmos_aloha.teleop_node:main",
    "recorder": "cosmos_aloha.recorder_node:main",
    "replay_chunks": "cosmos_aloha.replay_chunk_node:main",
    "lifecycle_manager": "cosmos_aloha.lifecycle_manager_node:main",
}

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="cosmos_aloha developers",
    maintainer_email="dev@cosmos-aloha.invalid",
    description="Cosmos Policy on the bimanual ALOHA (ROS 2 nodes)",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in NODES.items()]},
)
