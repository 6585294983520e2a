# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Local SST-2 copy on the project machines; override with SST2_DIR=/path/to/SST-2 (make variable or environment).
# Without one the demo trains on the small review set shipped in data/demo (its README says what it is).
SST2_DIR ?= ../shared/data/SST-2
ifneq ($(wildcard $(SST2_DIR)/train.tsv),)
DEMO_DIR = $(SST2_DIR)
else
DEMO_DIR = data/demo
endif
DEMO_DATA = --train $(DEMO_DIR)/train.tsv --dev $(DEMO_DIR)/dev.tsv

.PHONY: setup test demo accuracy clean

$(BIN)/fg-edge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on the project machines this resolves to a local CPU build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[train,dev]"
	touch $@

setup: $(BIN)/fg-edge

test: setup
	$(BIN)/python -m pytest -q

# The main job on an embedded default: gates on all-MiniLM-L6-v2 for SST-2 sentiment, compile (+int8, .ort),
# then bench the compiled model against its dense baseline on the CPU EP and the mobile profile.
demo: setup
	@echo "demo data: $(DEMO_DIR)"
	$(BIN)/fg-edge train sentence-transformers/all-MiniLM-L6-v2 --task classification \
		$(DEMO_DATA) --max-train 2000 --epochs 2 --label-names negative,positive \
		--target-sparsity 0.4 --output demo_out/model_dir --overwrite
	$(BIN)/fg-edge inspect demo_out/model_dir --plot demo_out/gates.png
	$(BIN)/fg-edge compile demo_out/model_dir -o demo_out/compiled --overwrite --quantize int8 --ort-format
	$(BIN)/fg-edge bench demo_out/compiled --providers cpu,mobile --batch 1 --seq 128 --threads 1,2 \
		--repeats 20 -o demo_out/bench
	$(BIN)/fg-edge run demo_out/compiled "a gripping, funny and moving film"

# The accuracy study (benchmarks/accuracy/study.py): dense, LoRA and FineGates at 20/40/55% of block parameters
# removed on all-MiniLM-L6-v2 / SST-2; writes benchmarks/results/accuracy/sst2.{json,md,png}. About 1 h 45 min on 2 cores.
accuracy: setup
	$(BIN)/pip install -q -e ".[train,dev,bench]"
	SST2_DIR=$(SST2_DIR) $(BIN)/python benchmarks/accuracy/study.py

clean:
	rm -rf $(VENV) demo_out
