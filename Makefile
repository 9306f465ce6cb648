# Two entry points (README): `make demo` and `make test`. Both create/reuse .venv.
VENV ?= .venv
export MUJOCO_GL ?= egl
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: install demo test test-all bench
install:
	@VENV=$(VENV) scripts/install.sh

demo: install
	$(VENV)/bin/cosmos-aloha demo

test: install
	$(VENV)/bin/python -m pytest -q

test-all: install
	$(VENV)/bin/python -m pytest -q -m "not gpu"
