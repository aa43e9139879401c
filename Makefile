# The two set-up commands: `make demo` and `make test`. Both create/refresh .venv first.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
# torch/torchvision come first, by exact version, so pip takes the local wheels.
TORCH   := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out
# Real device recordings for the reader/cleaning tests: the sdist of itk-pocus 0.3.2 (Apache-2.0)
# ships them under tests/data/. Fetched once into a git-ignored cache, checked against its sha256.
POCUS_VER    := 0.3.2
POCUS_CACHE  := .cache/itk-pocus
POCUS_SDIST  := $(POCUS_CACHE)/itk-pocus-$(POCUS_VER).tar.gz
POCUS_SHA256 := 54b9442d8244d47c233170650b9edb06d0b4262893b2d7659d3b2c122d711e33
POCUS_DATA   := $(POCUS_CACHE)/itk-pocus-$(POCUS_VER)/tests/data

.PHONY: venv demo test clean testdata

venv: $(STAMP)

testdata: $(POCUS_DATA)/.extracted

$(POCUS_SDIST): | $(STAMP)
	mkdir -p $(POCUS_CACHE)
	$(VENV)/bin/pip download -q --no-deps --no-binary :all: itk-pocus==$(POCUS_VER) -d $(POCUS_CACHE)
	echo "$(POCUS_SHA256)  $@" | sha256sum -c - >/dev/null || { echo "$@: sha256 mismatch" >&2; rm -f $@; exit 1; }

$(POCUS_DATA)/.extracted: $(POCUS_SDIST)
	tar -xzf $< -C $(POCUS_CACHE) itk-pocus-$(POCUS_VER)/tests/data
	touch $@

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash launch/demo.sh $(DEMO_OUT)

test: $(STAMP) testdata
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) .cache
