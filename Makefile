# Set-up and entry points. `make test` and `make demo` each work alone on a fresh
# machine with Python 3.11: they create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url <CPU wheel index>". Without CUDA we
# install the +cpu build and stop with a clear error rather than fall back to a CUDA build.
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast demo finetune-demo lint bench clean fashion-mnist janeaustenr

venv: $(STAMP)

# torch goes in first and explicitly: without CUDA we want the CPU build of the pinned
# version, never the multi-GB CUDA build a bare `torch` requirement would pull.
# DeepSpeed ships as an sdist whose setup.py imports torch, so it is built against the
# torch already in the venv (--no-build-isolation). Its CPU Adam op (the optimizer of ZeRO-Offload) is compiled
# just in time on first use (~1 min, needs g++; ninja comes with DeepSpeed); we build it here, once, into torch's
# extension cache, so that neither a test nor a run pays for it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS); \
	else \
		$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)+cpu" $(TORCH_PIP_ARGS) || { \
		echo "error: pip found no CPU build of torch $(TORCH_VERSION). Point it at one, e.g." \
		     "make test TORCH_PIP_ARGS='--index-url <CPU wheel index>' (or '--find-links <dir>')"; exit 1; }; \
	fi
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed>=0.16"
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,demo,atlas,compare,modelnet]"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -c \
		"from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()" >/dev/null || { \
		echo "error: DeepSpeed's CPU Adam op (ZeRO-Offload's optimizer) did not build: it needs a C++ compiler" \
		     "(g++) and ninja (installed with DeepSpeed)"; exit 1; }
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow and not multiprocess"

lint: $(STAMP)
	$(BIN)/ruff check .

# The embedded demo data (text, digits, captions, point clouds, tokenizer; ~5 s), then pretraining the tiny model on
# it with DeepSpeed on 2 CPU ranks (configs/pretrain/demo.yaml; a fresh run each time: runs/demo is replaced).
demo: $(STAMP)
	$(BIN)/python tools/make_shards.py demo --output demo_data --overwrite
	rm -rf runs/demo
	OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/deepspeed --num_accelerators 2 launch/pretrain.py \
		--config configs/pretrain/demo.yaml

# The demo's pretrained model in the library format (models/demo), converted from `make demo`'s last checkpoint;
# `make demo` runs first when there is none.
DEMO_MODEL := models/demo
$(DEMO_MODEL)/config.yaml: runs/demo/checkpoints/latest | $(STAMP)
	$(BIN)/python tools/convert_checkpoint.py library runs/demo/checkpoints $(DEMO_MODEL) --overwrite --verify

runs/demo/checkpoints/latest:
	$(MAKE) demo

# Fine-tuning on real(ish) data end to end, outside `make test` (~28 min on 2 CPU cores): Fashion-MNIST as an
# ImageNet tree, sentences of two Jane Austen novels as GLUE SST-2, synthetic shapes as ModelNet40, easy-VQA's
# shapes and questions as VQA v2, Fashion-MNIST pairs with true/false statements as NLVR2, each fine-tuned from the
# demo model and from scratch with DeepSpeed on 2 CPU ranks (tools/finetune_demo.py; a fresh run each time:
# runs/finetune-demo is replaced). The table: runs/finetune-demo/results.md (and .json).
FINETUNE_DEMO := runs/finetune-demo
finetune-demo: $(STAMP) fashion-mnist janeaustenr $(DEMO_MODEL)/config.yaml
	rm -rf $(FINETUNE_DEMO)
	$(BIN)/python tools/finetune_demo.py data --data-dir $(DATA) --out $(FINETUNE_DEMO)/data
	OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/finetune_demo.py run \
		--data $(FINETUNE_DEMO)/data --model $(DEMO_MODEL) --out $(FINETUNE_DEMO)

bench: $(STAMP)
	$(BIN)/python tools/bench.py operator --json bench/operator.json

# The comparison's real data (tools/compare.py), from Debian packages unpacked without root into data/ (ignored):
# Fashion-MNIST's gzip idx files, and the R package janeaustenr's lazy-load data base (Jane Austen's six novels).
DATA := data
fashion-mnist: $(DATA)/fashion-mnist/t10k-labels-idx1-ubyte.gz
janeaustenr: $(DATA)/janeaustenr/data/Rdata.rdb

$(DATA)/fashion-mnist/t10k-labels-idx1-ubyte.gz:
	rm -rf $(DATA)/.deb-fashion && mkdir -p $(DATA)/.deb-fashion $(DATA)/fashion-mnist
	cd $(DATA)/.deb-fashion && apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb tree
	cp $(DATA)/.deb-fashion/tree/usr/share/datasets/fashion-mnist/*.gz $(DATA)/fashion-mnist/
	rm -rf $(DATA)/.deb-fashion

$(DATA)/janeaustenr/data/Rdata.rdb:
	rm -rf $(DATA)/.deb-austen && mkdir -p $(DATA)/.deb-austen $(DATA)/janeaustenr
	cd $(DATA)/.deb-austen && apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb tree
	rm -rf $(DATA)/janeaustenr/data && cp -r $(DATA)/.deb-austen/tree/usr/lib/R/site-library/janeaustenr/data \
		$(DATA)/janeaustenr/data
	cp $(DATA)/.deb-austen/tree/usr/share/doc/r-cran-janeaustenr/copyright $(DATA)/janeaustenr/
	rm -rf $(DATA)/.deb-austen

clean:
	rm -rf $(VENV)
