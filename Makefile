# Two entry points (README): `make demo` and `make test`. Both create/reuse .venv.
VENV ?= .venv
export MUJOCO_GL ?= egl
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: install ros2-cli demo test test-all bench
install:
	@VENV=$(VENV) scripts/install.sh

demo: install
	$(VENV)/bin/cosmos-aloha demo

# The ROS 2 command line (ros2 launch, topic, lifecycle, ...) for the tests of the launch file: a ROS 2
# distribution's own, else the wheels in ../shared/ros2-cli when that folder is there.
ros2-cli: install
	@command -v ros2 >/dev/null || [ -x $(VENV)/bin/ros2 ] || [ ! -f ../shared/ros2-cli/install.sh ] || \
		bash ../shared/ros2-cli/install.sh $(VENV)/bin/python

test: ros2-cli
	$(VENV)/bin/python -m pytest -q

test-all: ros2-cli
	$(VENV)/bin/python -m pytest -q -m "not gpu"
