#!/usr/bin/env bash
# One install recipe for every environment (README, CI, docker): a virtual environment in
# .venv (reused when present) with the library, the ROS 2 wheels, the sim and the dev tools.
#   scripts/install.sh            -> .venv with extras ros,sim,data,hw,dev
#   EXTRAS=ros,sim,data,trt scripts/install.sh   (robot PC / docker)
#   VENV=/opt/venv scripts/install.sh
#   VENV_ARGS=--system-site-packages EXTRAS=sim,data,hw,trt scripts/install.sh
#        (a real ROS 2 install: rclpy and messages come from /opt/ros, not from the ros-* wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-ros,sim,data,hw,dev}
PY=${PYTHON:-python3}

# Headless MuJoCo rendering needs an EGL (or OSMesa) library; install Mesa's when missing.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[install] libEGL missing: installing Mesa EGL (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgles2 libgl1 >/dev/null
  else
    echo "[install] warning: libEGL.so.1 not found and apt-get unavailable; set MUJOCO_GL=osmesa or install libegl1" >&2
  fi
fi

stamp="$VENV/.cosmos_aloha_installed"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$(cat "$stamp")" = "$EXTRAS" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv ${VENV_ARGS:-} "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip wheel "setuptools>=68"
# torch first and pinned: the CPU build (an unpinned torch pulls several GB of CUDA wheels).
# GPU users: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" scripts/install.sh
"$VENV/bin/python" -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
echo "$EXTRAS" > "$stamp"
echo "[install] ready: $VENV ($EXTRAS)"
