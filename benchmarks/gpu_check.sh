#!/usr/bin/env bash
# One GPU check (GPU-only tests + engine benchmarks), as run on the lent H100/H200 machine (no network there).
# Prepared here first (ignored folders that travel with `carry`):
#   .whl/  transformers==5.24.0 wheel (the machine has 5.17), plus peft, accelerate, psutil and gguf (one-forward
#          pairs, their GPU test and stage `oneforward`; `bash benchmarks/gpu_carry.sh` downloads them; 15 MB in all):
#          pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0
#   .gpu/gemma-270m-shape/  config.json, generation_config.json, tokenizer_config.json, chat_template.jinja
#          and tokenizer.json.gz
#          of the embedded Gemma (from ~/.cache/baco/gemma-3-270m-base-bfloat16 after `make demo`)
#   .carry/ (stage `real` only) the embedded GGUF in pieces, and more wheels: see benchmarks/gpu_carry.sh
# Usage: bash benchmarks/gpu_check.sh [tests] [stepmath] [memory] [270m] [compiled] [oneforward] [throughput] [1b] [static] [real]
#        (no argument: tests stepmath memory 270m compiled throughput 1b)
#        HF="eager" also times transformers generate in the 270m/1b stages; PROMPTS=300 shortens the throughput run;
#        THROUGHPUT_FLAGS="--one-forward on --compile" runs it on one forward / compiled forwards
# Output: $OUT/gpu_check.log
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
log=${OUT:-/tmp}/gpu_check.log
exec > >(tee -a "$log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
site=/tmp/site
mkdir -p /tmp/shape && cp .gpu/gemma-270m-shape/* /tmp/shape/ && gunzip -f /tmp/shape/tokenizer.json.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONPATH=$site:src
python3 -c "import torch, transformers, baco; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(), baco.__file__)"

stages=${*:-tests stepmath memory 270m compiled throughput 1b}
want() { [[ " $stages " == *" $1 "* ]]; }
bench() { timeout "$1" python3 "${@:2}" 2>&1 | grep -v -i warn; }
gemma_1b=(--set num_hidden_layers=26 hidden_size=1152 intermediate_size=6912)

if want tests; then
  echo "== GPU tests (graph == eager, no host sync, late joiners) and the engine's CPU tests =="
  timeout 420 python3 -m pytest -q -s -p no:cacheprovider --durations=8 tests/test_engine_gpu.py tests/test_engine.py 2>&1 | tail -40
fi
if want stepmath; then
  echo "== the step without the forwards (routing, word rule, sampling; 262k vocabulary), ms and kernels per call =="
  bench 90 benchmarks/step_math.py --device cuda --batch 1 8 64 --top-p
fi
if want memory; then
  echo "== what an engine holds beyond its caches (CUDA allocator peak) vs what --max-batch auto reserves, 270M shape =="
  bench 120 benchmarks/engine_memory.py --device cuda --shape /tmp/shape --batch 8 64 --max-len 1024 --words 200
fi
if want 270m; then
  echo "== lockstep vs compiled single-model steps, Gemma-3-270M shape (and the step with penalties, with a logit bias) =="
  bench 180 benchmarks/lockstep_overhead.py --device cuda --shape /tmp/shape --batch 1 8 64 --steps 8 40 --repeats 2 \
    --hf ${HF:-} --penalties --logit-bias --profile
fi
if want compiled; then
  echo "== the same with torch.compile'd forwards inside the captured steps (--compile; compiling not timed) =="
  bench 300 benchmarks/lockstep_overhead.py --device cuda --shape /tmp/shape --batch 1 8 64 --steps 8 40 --repeats 2 \
    --compile
fi
if want oneforward; then
  echo "== one forward: a random model + a random rank-16 LoRA adapter as rows of one captured forward, 270M shape =="
  bench 150 benchmarks/lockstep_overhead.py --device cuda --shape /tmp/shape --one-forward on --batch 1 8 64 \
    --steps 8 40 --repeats 2 --hf
  echo "== the same, compiled (--compile; compiling not timed) =="
  bench 300 benchmarks/lockstep_overhead.py --device cuda --shape /tmp/shape --one-forward on --batch 1 8 64 \
    --steps 8 40 --repeats 2 --hf --compile
fi
if want throughput; then
  echo "== throughput: ${PROMPTS:-1000} prompts x n=4, lengths 16-128 + stop tokens, static vs continuous batching =="
  bench 420 benchmarks/throughput.py --device cuda --shape /tmp/shape --prompts "${PROMPTS:-1000}" --n 4 --max-batch 64 \
    --lengths 16 128 --admit-at ${ADMIT_AT:-8} --static-prefill ${THROUGHPUT_FLAGS:-}
fi
if want 1b; then
  echo "== lockstep vs compiled single-model steps, Gemma-3-1B shape (26 layers, hidden 1152) =="
  bench 120 benchmarks/lockstep_overhead.py --device cuda --shape /tmp/shape "${gemma_1b[@]}" --batch 1 8 64 --steps 8 40 \
    --repeats 2 --hf ${HF:-}
fi
if want static; then
  echo "== transformers generate with a StaticCache (compiled by transformers), Gemma-3-270M shape =="
  bench 300 benchmarks/lockstep_overhead.py --device cuda --shape /tmp/shape --batch 1 64 --steps 8 40 --repeats 1 --hf eager static
fi
if want real; then
  echo "== real weights: the embedded pair (Gemma-3-270M Q4_K_M dequantised to bf16 + baco's adapter) =="
  export BACO_CACHE=/tmp/baco-cache
  cat .carry/gemma.gguf.part* > /tmp/gemma.gguf
  if [[ "$(sha256sum /tmp/gemma.gguf | cut -d' ' -f1)" != "$(cat .carry/gemma.gguf.sha256)" ]]; then
    echo "the carried GGUF pieces are incomplete: $(ls .carry)"; exit 1
  fi
  timeout 300 python3 -c "from pathlib import Path; from baco.models.embedded import convert_gguf, cache_dir; \
convert_gguf(Path('/tmp/gemma.gguf'), cache_dir() / 'gemma-3-270m-base-bfloat16', 'bfloat16')" 2>&1 | grep -v -i warn | tail -5
  bench 240 benchmarks/lockstep_overhead.py --device cuda --base baco:gemma-3-270m --aligned baco:gemma-3-270m-aligned \
    --batch 1 8 64 --steps 8 40 --repeats 2 --hf ${HF:-}
  echo "== the same pair in one forward (one copy of the weights, the adapter weighted per row) =="
  bench 240 benchmarks/lockstep_overhead.py --device cuda --base baco:gemma-3-270m --aligned baco:gemma-3-270m-aligned \
    --batch 1 8 64 --steps 8 40 --repeats 2 --hf --one-forward on
fi
