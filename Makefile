# The two set-up commands: `make demo` and `make test`. Both create/refresh .venv first.
PY      ?= python3
# pytest-xdist workers for `make test` (the SLURM tests share one; see tests/conftest.py).
TEST_WORKERS ?= 2
VENV    := .venv
STAMP   := $(VENV)/.installed
# torch/torchvision come first, by exact version, so pip takes the local wheels.
TORCH   := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out
# Real device recordings for the reader/cleaning tests, from the sdists of three PyPI packages that
# ship them as test data: fetched once into a git-ignored cache, checked against their sha256, the
# ultrasound files extracted. itk-pocus 0.3.2 (Apache-2.0): Butterfly, Clarius, SonoSite, Interson,
# Sonoque, Sonivate recordings. deid-data 0.0.20 (MIT): probes in air (Philips EPIQ and Terason
# linear, Siemens convex) and a Philips echo colour-Doppler cine. pydicom-data 1.0.0 (MIT): GE LOGIQ
# power Doppler, a Philips convex in air with a caliper, an Aloka view with an arrow and text.
POCUS_DATA := .cache/itk-pocus/itk-pocus-0.3.2/tests/data
DEID_DATA  := .cache/deid-data/deid-data-0.0.20/deid_data/data/ultrasounds
PYDD_DATA  := .cache/pydicom-data/pydicom-data-1.0.0/data_store/data
PYDD_FILES := US1_UNCR.dcm US1_J2KR.dcm OBXXXX1A.dcm gdcm-US-ALOKA-16.dcm JPGLosslessP14SV1_1s_1f_8b.dcm \
              color3d_jpeg_baseline.dcm color-pl.dcm

.PHONY: venv demo test clean testdata

venv: $(STAMP)

testdata: $(POCUS_DATA)/.extracted $(DEID_DATA)/.extracted $(PYDD_DATA)/.extracted

# $(call sdist,package,version,sha256): download the pinned sdist into .cache/package/ and check it.
define sdist
.cache/$(1)/$(1)-$(2).tar.gz: | $(STAMP)
	mkdir -p .cache/$(1)
	$(VENV)/bin/pip download -q --no-deps --no-binary :all: $(1)==$(2) -d .cache/$(1)
	echo "$(3)  $$@" | sha256sum -c - >/dev/null || { echo "$$@: sha256 mismatch" >&2; rm -f $$@; exit 1; }
endef
$(eval $(call sdist,itk-pocus,0.3.2,54b9442d8244d47c233170650b9edb06d0b4262893b2d7659d3b2c122d711e33))
$(eval $(call sdist,deid-data,0.0.20,33d455f13c82f76a39e8eb52d2808a35d7cde29c120819e246c863432281b8ed))
$(eval $(call sdist,pydicom-data,1.0.0,93f2094f219b6fec1e6dbed2e5039fb879272f678646a351b46172f6d0bf110f))

$(POCUS_DATA)/.extracted: .cache/itk-pocus/itk-pocus-0.3.2.tar.gz
	tar -xzf $< -C .cache/itk-pocus itk-pocus-0.3.2/tests/data
	touch $@

# The two cines are zipped inside the sdist.
$(DEID_DATA)/.extracted: .cache/deid-data/deid-data-0.0.20.tar.gz
	tar -xzf $< -C .cache/deid-data deid-data-0.0.20/deid_data/data/ultrasounds
	cd $(DEID_DATA) && for z in *.zip; do $(CURDIR)/$(VENV)/bin/python -m zipfile -e $$z .; done
	touch $@

$(PYDD_DATA)/.extracted: .cache/pydicom-data/pydicom-data-1.0.0.tar.gz
	tar -xzf $< -C .cache/pydicom-data $(addprefix pydicom-data-1.0.0/data_store/data/,$(PYDD_FILES))
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
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) .cache
