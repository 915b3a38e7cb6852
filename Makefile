# One venv for everything. `make test` and `make demo` set it up on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel for these machines. On a GPU: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DIR ?= .cache/tiny-pair

.PHONY: setup test demo bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

demo: $(BIN)/.installed
	$(BIN)/python -m baco.testing $(DEMO_DIR) > /dev/null
	$(BIN)/baco generate --base $(DEMO_DIR)/base --aligned $(DEMO_DIR)/aligned --router p-punc:0.5 \
		--n 4 --max-new-tokens 40 --min-p 0.05 --seed 0 --color always \
		--prompt "Name a fruit." --prompt "Tell me a story about a dragon." --prompt "Give me three party ideas." \
		--out $(DEMO_DIR)/demo.jsonl

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/lockstep_overhead.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
