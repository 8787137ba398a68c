# The two entry points of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
NPROCS ?= 2
export NIPYPE_NO_ET := 1
export TEMPLATEFLOW_HOME ?= $(abspath $(DEMO_DIR))/templateflow

.PHONY: install demo test image check-image clean-demo

install: $(VENV)/.installed

# torch first, pinned to the CPU wheel: nflows asks for an unpinned torch, which
# would otherwise pull a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: install
	$(BIN)/bidsharmony-templateflow $(TEMPLATEFLOW_HOME)
	test -d $(DEMO_DIR)/data/bids || $(BIN)/bidsharmony-demo-data $(DEMO_DIR)/data
	$(BIN)/bidsharmony $(DEMO_DIR)/data/bids $(DEMO_DIR)/derivatives participant \
		--nprocs $(NPROCS) --output-spaces MNI152NLin2009aSym:res-2 --reg-quality fast \
		-w $(DEMO_DIR)/work
	$(BIN)/bidsharmony $(DEMO_DIR)/data/bids $(DEMO_DIR)/derivatives group \
		--site-column site --harmonizer combat flow-scm histogram-matching --min-site-size 3 --epochs 50 \
		-w $(DEMO_DIR)/work
	@echo "Demo outputs: $(DEMO_DIR)/derivatives (reports: $(DEMO_DIR)/derivatives/sub-*.html, group table: $(DEMO_DIR)/derivatives/group/); ground truth: $(DEMO_DIR)/data/ground_truth"

test: install
	$(BIN)/python -m pytest -n 2 tests

# The BIDS-App image from the Dockerfile, with podman/buildah (installed if missing, as root
# on Debian); tagged localhost/bidsharmony:latest. See scripts/container/.
image:
	scripts/container/build_image.sh localhost/bidsharmony:latest

# Both levels inside the image (read-only root, another uid) against the same run outside.
check-image: install
	scripts/container/check_image.sh localhost/bidsharmony:latest

clean-demo:
	rm -rf $(DEMO_DIR)
