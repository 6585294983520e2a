# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Local SST-2 copy on the project machines; override with SST2_DIR=/path/to/SST-2
SST2_DIR ?= ../shared/data/SST-2

.PHONY: setup test demo clean

$(BIN)/fg-edge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on the project machines this resolves to a local CPU build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[onnx,dev]"
	touch $@

setup: $(BIN)/fg-edge

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/fg-edge train sentence-transformers/all-MiniLM-L6-v2 --task classification \
		--train $(SST2_DIR)/train.tsv --dev $(SST2_DIR)/dev.tsv --max-train 4000 \
		--output demo_out/model_dir --overwrite
	$(BIN)/fg-edge inspect demo_out/model_dir

clean:
	rm -rf $(VENV) demo_out
