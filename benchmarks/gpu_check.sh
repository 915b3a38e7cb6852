#!/usr/bin/env bash
# One GPU check (tests + lockstep benchmark), as run on the lent H100/H200 machine (no network there).
# Prepared here first (ignored folders that travel with `carry`):
#   .whl/  transformers==5.24.0 wheel (the machine has 5.17)
#   .gpu/gemma-270m-shape/  config + gzipped tokenizer of the embedded Gemma (~/.cache/baco/...-bfloat16)
#   .gpu/old-src/  optional: an older checkout's src/, timed with the same script for comparison
# Usage: bash benchmarks/gpu_check.sh [tests] [270m] [old] [1b]   (no argument: all four)
# Output: $OUT/gpu_check.log
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
log=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
site=/tmp/site
mkdir -p /tmp/shape && cp .gpu/gemma-270m-shape/* /tmp/shape/ && gunzip -f /tmp/shape/tokenizer.json.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=$site:src python3 -c "import torch, transformers, baco; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(), baco.__file__)"

stages=${*:-tests 270m old 1b}
want() { [[ " $stages " == *" $1 "* ]]; }

want tests && echo "== tests on the GPU (device=auto puts every model on cuda) =="
want tests && PYTHONPATH=$site:src timeout 200 python3 -m pytest -q -m "not slow" -n 8 -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tail -40

bench() { PYTHONPATH=$site:$1 timeout "$2" python3 benchmarks/lockstep_overhead.py --device cuda "${@:3}" 2>&1 | grep -v -i warn; }
if want 270m; then
  echo "== lockstep overhead, Gemma-3-270M shape, this checkout =="
  bench src 90 --shape /tmp/shape --batch 1 8 64 --steps 8 40 --repeats 2
fi
if want old && [ -d .gpu/old-src ]; then
  echo "== the same with .gpu/old-src (distributions copied to the CPU every step) =="
  bench .gpu/old-src 100 --shape /tmp/shape --batch 8 64 --steps 8 40 --repeats 2
fi
if want 1b; then
  echo "== lockstep overhead, Gemma-3-1B shape (26 layers, hidden 1152), this checkout =="
  bench src 100 --shape /tmp/shape --set num_hidden_layers=26 hidden_size=1152 intermediate_size=6912 \
    --batch 1 32 --steps 8 40 --repeats 1
fi
