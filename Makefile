# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test` (the suite).
VENV ?= .venv
PY := $(VENV)/bin/python
export YOLO_OFFLINE ?= 1
export YOLO_AUTOINSTALL ?= False
export YOLO_CONFIG_DIR ?= $(CURDIR)/.yolo-config
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: setup demo test cards clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(PY) recipes/reproduce.py --model agssp_efficientnet_lite0 --profile smoke --out out/smoke

test: setup
	$(PY) -m pytest -q -ra

cards: setup
	$(VENV)/bin/agssp-hub cards

clean:
	rm -rf out .pytest_cache
