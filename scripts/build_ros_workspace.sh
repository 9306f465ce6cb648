#!/usr/bin/env bash
# Builds the cosmos_aloha ROS 2 package into a colcon workspace and checks what `ros2 launch` needs is installed.
# The docker image runs it; tests/test_docker.py runs it here (colcon from the dev extra, no ROS distro needed).
#   scripts/build_ros_workspace.sh /opt/cosmos_ws          # then: source /opt/cosmos_ws/install/setup.bash
#   COLCON=.venv/bin/colcon scripts/build_ros_workspace.sh /tmp/ws
# The package's launch/ is a relative symlink to the repository's launch/; the workspace gets real files, so the
# built workspace stands on its own (a plain `cp -r` would copy the link, dangling outside the repository).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WS="${1:?usage: scripts/build_ros_workspace.sh WORKSPACE_DIR}"
COLCON="${COLCON:-colcon}"
case "$COLCON" in */*) COLCON="$(cd "$(dirname "$COLCON")" && pwd)/$(basename "$COLCON")" ;; esac
PACKAGE=cosmos_aloha

mkdir -p "$WS/src"
WS="$(cd "$WS" && pwd)"
rm -rf "${WS:?}/src/$PACKAGE"
cp -R -L "$REPO/ros2_ws/src/$PACKAGE" "$WS/src/$PACKAGE"   # -L: symlinks become the files they point to

cd "$WS"
"$COLCON" build --packages-select "$PACKAGE" --event-handlers console_cohesion-

share="$WS/install/$PACKAGE/share/$PACKAGE"
missing=0
for f in package.xml launch/bringup.launch.py; do
  if [ ! -f "$share/$f" ]; then   # -f follows links: a dangling one counts as missing
    echo "[build_ros_workspace] missing after the build: $share/$f" >&2
    missing=1
  fi
done
for launch in "$REPO"/launch/*.launch.py; do
  [ -f "$share/launch/$(basename "$launch")" ] || { echo "[build_ros_workspace] not installed: $launch" >&2; missing=1; }
done
[ "$missing" = 0 ] || exit 1
echo "[build_ros_workspace] built $PACKAGE in $WS; source $WS/install/setup.bash, then: ros2 launch $PACKAGE bringup.launch.py"
