# Two commands do all the set-up on a plain Linux machine with Python 3.10-3.12:
#   make run    the full follow-me loop, headless, in the embedded simulator
#   make test   lint, unit and ROS tests, the colcon build test
# Each creates or updates .venv by itself (idempotent; a stamp per requirements file keeps the
# second run fast). On a machine with ROS 2 installed, use colcon and `ros2 launch` instead.

SHELL := /bin/bash
# env.sh expects the environment in .venv
VENV := .venv
PYTHON ?= $(shell for p in python3 python3.12 python3.11 python3.10; do \
	command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' \
	&& { echo $$p; break; }; done)
PY := $(VENV)/bin/python
RUN_ARGS ?=
PYTEST_ARGS ?=

# env.sh: the environment for ROS 2 from the wheels (also for users' own shells).
ENV := source ./env.sh &&

.PHONY: run test test-ort-builds lint env test-env sysdeps gpu openvino cpu clean help

help:
	@echo "make run   - run the follow-me loop in the embedded simulator (RUN_ARGS='--help')"
	@echo "make test  - lint + all tests (PYTEST_ARGS='-k control' to pick some)"
	@echo "make test-ort-builds - the inference tests again on the GPU and OpenVINO builds"
	@echo "make gpu   - switch .venv to onnxruntime-gpu, with CUDA 13 and cuDNN 9 as pip wheels"
	@echo "make openvino - switch .venv to onnxruntime-openvino (faster on Intel CPUs)"
	@echo "make cpu   - switch .venv back to the plain onnxruntime"

run: env
	$(ENV) python -m followme_common.runner $(RUN_ARGS)

# Two pytest processes: TensorFlow and MuJoCo's EGL renderer cannot share one (see
# test/conftest.py). Exit code 5 (nothing selected, e.g. with PYTEST_ARGS=-k) is no failure.
test: test-env
	$(MAKE) --no-print-directory lint
	$(ENV) python -m pytest -m 'not tensorflow' --ignore-glob='test/test_training_*' $(PYTEST_ARGS) \
		|| [ $$? = 5 ]
	$(ENV) python -m pytest -m tensorflow $(PYTEST_ARGS) || [ $$? = 5 ]

# The tests that touch ONNX Runtime again on its other builds (requirements/gpu.txt,
# requirements/openvino.txt), each installed on its own in build/ort/<name> and put first on
# PYTHONPATH, so .venv keeps its build. Tests that only run there: OpenVINO preferred and
# agreeing with the CPU provider; the GPU build noticing it fell back to the CPU. CI runs it.
ORT_TEST_BUILDS := openvino gpu
ORT_TESTS := test/test_perception_core.py test/test_perception_node.py \
	test/test_graph_rewrite.py test/test_offline_regression.py test/test_bringup.py
test-ort-builds: test-env
	@for build in $(ORT_TEST_BUILDS); do \
		dir=build/ort/$$build; \
		if [ ! -f $$dir/.stamp ] || [ requirements/$$build.txt -nt $$dir/.stamp ]; then \
			rm -rf $$dir && $(PY) -m pip install -q --no-deps --target $$dir \
				-r requirements/$$build.txt && touch $$dir/.stamp || exit 1; \
		fi; \
		echo "== ONNX Runtime build from requirements/$$build.txt"; \
		$(ENV) PYTHONPATH=$$PWD/$$dir:$$PYTHONPATH python -c 'import onnxruntime as ort; \
			print(ort.__file__, ort.__version__, ort.get_available_providers())' && \
		$(ENV) PYTHONPATH=$$PWD/$$dir:$$PYTHONPATH python -m pytest -m 'not tensorflow' \
			$(ORT_TESTS) $(PYTEST_ARGS) || exit 1; \
	done

lint: test-env
	$(ENV) ament_flake8 followme_common followme_perception followme_control \
		followme_sim training bench test launch setup.py
	$(ENV) ament_pep257 followme_common followme_perception followme_control \
		followme_sim training bench

env: sysdeps $(VENV)/.stamp-runtime
test-env: env $(VENV)/.stamp-test

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "error: need Python 3.10, 3.11 or 3.12 (python3 is $$(python3 --version 2>&1))"; exit 1; }
	@if [ -n "$$ROS_DISTRO" ]; then echo "error: a system ROS 2 ($$ROS_DISTRO) is sourced in this shell; open a clean shell or use colcon (see README)"; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Keeps whichever ONNX Runtime build `make gpu` or `make openvino` installed.
$(VENV)/.stamp-runtime: requirements/runtime.txt | $(VENV)/bin/python
	@if $(PY) -m pip show -q onnxruntime-gpu 2>/dev/null; then \
		$(PY) -m pip install -q -r <(grep -v '^onnxruntime==' requirements/runtime.txt) -r requirements/gpu.txt; \
	elif $(PY) -m pip show -q onnxruntime-openvino 2>/dev/null; then \
		$(PY) -m pip install -q -r <(grep -v '^onnxruntime==' requirements/runtime.txt) -r requirements/openvino.txt; \
	else $(PY) -m pip install -q -r requirements/runtime.txt; fi
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-runtime requirements/training.txt requirements/dev.txt
	$(PY) -m pip install -q -r requirements/training.txt -r requirements/dev.txt
	touch $@

# MuJoCo renders headless through EGL on Mesa (Debian: libegl1 + libegl-mesa0).
sysdeps:
	@if ! ldconfig -p | grep -q libEGL_mesa; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing libegl1 libegl-mesa0 (headless rendering for the simulator)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0; \
		else echo "warning: run 'sudo apt-get install libegl1 libegl-mesa0' so the simulator can render"; fi; \
	fi

# The ONNX Runtime builds (onnxruntime, onnxruntime-gpu, onnxruntime-openvino) all install the
# same `onnxruntime` module and must never share an environment: each switch removes them all.
ORT_BUILDS := onnxruntime onnxruntime-gpu onnxruntime-openvino

# GPU_REQUIREMENTS=requirements/gpu.txt where CUDA 13 and cuDNN 9 are installed already.
GPU_REQUIREMENTS ?= requirements/gpu-cuda.txt
gpu: env
	$(PY) -m pip uninstall -y -q $(ORT_BUILDS)
	$(PY) -m pip install -q -r $(GPU_REQUIREMENTS)
	touch $(VENV)/.stamp-runtime

openvino: env
	$(PY) -m pip uninstall -y -q $(ORT_BUILDS)
	$(PY) -m pip install -q -r requirements/openvino.txt
	touch $(VENV)/.stamp-runtime

cpu: env
	$(PY) -m pip uninstall -y -q $(ORT_BUILDS)
	$(PY) -m pip install -q $$(grep '^onnxruntime==' requirements/runtime.txt)
	touch $(VENV)/.stamp-runtime

clean:
	rm -rf build install log runs
