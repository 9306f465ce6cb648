#!/usr/bin/env bash
# Sources ROS 2, the Interbotix workspace, the cosmos_aloha workspace and the project venv.
set -e
source "/opt/ros/${ROS_DISTRO}/setup.bash"
source /opt/interbotix_ws/install/setup.bash
source /opt/cosmos_ws/install/setup.bash
source /opt/cosmos_venv/bin/activate
exec "$@"
