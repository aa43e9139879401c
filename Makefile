# The two set-up commands: `make demo` and `make test`. Both create/refresh .venv first.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
# torch/torchvision come first, by exact version, so pip takes the local wheels.
TORCH   := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash launch/demo.sh $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_OUT)
