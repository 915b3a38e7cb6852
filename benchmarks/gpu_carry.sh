#!/usr/bin/env bash
# Prepare what the GPU check carries to the lent machine (no network there, 64 MiB per call), after `make demo`:
#   .whl/    wheels the machine may lack: transformers 5.24 (see gpu_check.sh), gguf, peft, accelerate (pure Python),
#            psutil (accelerate imports it; baco's memory check on the CPU reads it)
#   .gpu/    the embedded Gemma's configuration and tokenizer, the `--shape` of every stage (every stage carries
#            .whl and .gpu)
#   .carry/  the embedded Gemma-3-270M GGUF (Q4_K_M, 253 MB) in 5 pieces of 50.6 MB: gemma.gguf.part00 .. part04
#            (a piece + the 11.6 MB working tree fit one call; the 15 MB of wheels do not fit with a piece)
# Then, on a warm machine, back to back (it is released after ~30 s idle); what an earlier call carried stays
# there (ignored paths are kept between calls, unless a later call names them):
#   run(carry=[".whl", ".gpu", ".carry/gemma.gguf.sha256"], command="ls .whl")
#   run(carry=[".carry/gemma.gguf.part00"], command="ls .carry")   ... the same for part01 .. part04
#   run(command="bash benchmarks/gpu_check.sh real")
# The `real` stage's CPU part was dry-run here (2026-11-30): the pieces reassemble to the checked sha256, the
# conversion writes $BACO_CACHE/gemma-3-270m-base-bfloat16, and the baco:gemma-3-270m(-aligned) aliases then
# load from it without the chunk packages installed.
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
gguf=$(PYTHONPATH=src "$python" -c "from baco.models.embedded import _gguf_path; print(_gguf_path())")
mkdir -p .carry .whl
rm -f .carry/gemma.gguf.part*
split -n 5 -d "$gguf" .carry/gemma.gguf.part
sha256sum "$gguf" | cut -d' ' -f1 > .carry/gemma.gguf.sha256
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0 gguf==0.19.0 peft==0.21.2 accelerate==1.15.0 \
  psutil==7.2.2
# .gpu/gemma-270m-shape: the embedded Gemma's configuration and tokenizer (the `--shape` of every stage), from the
# bf16 copy that `make demo` converts once
shape=.gpu/gemma-270m-shape
converted=$(PYTHONPATH=src "$python" -c "from baco.models.embedded import cache_dir; \
print(cache_dir() / 'gemma-3-270m-base-bfloat16')")
mkdir -p "$shape"
cp "$converted"/{config.json,generation_config.json,tokenizer_config.json,chat_template.jinja} "$shape"/
gzip -c "$converted/tokenizer.json" > "$shape/tokenizer.json.gz"
ls -la .carry .whl "$shape"
