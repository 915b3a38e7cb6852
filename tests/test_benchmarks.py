"""The benchmark scripts that the GPU check runs still run: each on the CPU with tiny settings (a script that
breaks would cost a lent GPU session its minutes). Nothing here times anything: speed lives in benchmarks/."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_step_math_prints_every_router_sampling_and_path():
    out = script("step_math.py", "--batch", "2", "--vocab", "4096", "--repeats", "1", "--top-p", "--threads", "1")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["p-punc:0.5"], ["aligned"], ["eft:0.5"])]
    assert len(rows) == 3 * 2 * 2 and all(int(row[-1]) > 0 for row in rows)  # routers x samplings x paths


def test_throughput_runs_static_and_continuous_on_one_forward():
    out = script("throughput.py", "--prompts", "4", "--n", "2", "--max-batch", "4", "--lengths", "4", "8",
                 "--static-prefill", "--one-forward", "on", "--device", "cpu")
    assert "one forward" in out and "static:" in out and "static prefill / static =" in out


@pytest.mark.parametrize("flags", [["--penalties", "--logit-bias"], ["--compile"],
                                   ["--shape", "TINY", "--one-forward", "on"]],
                         ids=["eager-penalties-bias", "compiled", "shape-one-forward"])
def test_lockstep_overhead_prints_its_table(flags, tiny_dirs):
    flags = [str(tiny_dirs[0]) if flag == "TINY" else flag for flag in flags]  # --shape: a config and tokenizer
    out = script("lockstep_overhead.py", "--batch", "1", "--steps", "2", "6", "--repeats", "1", "--hf", *flags)
    header = next(line for line in out.splitlines() if line.split()[:2] == ["batch", "lockstep"])
    row = out.splitlines()[-1].split()
    assert header and row[0] == "1"
    if "--penalties" in flags:  # the penalised and biased steps' times and their ratios to the plain one
        assert header.split()[-8:] == ["penalised", "ms", "x", "plain", "biased", "ms", "x", "plain"], header
        assert len(row) == 10 and float(row[-1]) > 0 and float(row[-3]) > 0


def test_engine_memory_measures_within_what_auto_sizing_reserves():
    out = script("engine_memory.py", "--batch", "2", "--words", "20", "--max-len", "96", "--threads", "1")
    worst = next(line for line in out.splitlines() if line.startswith("worst measured / reserved"))
    assert 0 < float(worst.split(":")[1].split()[0]) <= 1 and 'max_batch="auto"' in out.splitlines()[-1]


def test_first_call_race_compares_each_process_first_generation_with_its_second():
    """--bare: torch's unary functions without the models (2 s a process, not 20: the model-loading child is
    `Collaboration.from_pretrained()` and `generate`, which test_embedded runs)."""
    out = script("first_call_race.py", "--processes", "2", "--bare")
    assert "without warm-up (BACO_VML_WARMUP=0): " in out and " of 1 processes' first call differed" in out
    assert "with warm-up (default): 0 of 1 processes" in out  # baco's default: the race cannot hit


def test_cross_lookahead_counts_the_lookaheads_of_the_models_a_router_reads(tmp_path):
    from baco.testing import make_tiny_cross_pair

    base, aligned = make_tiny_cross_pair(tmp_path)
    out = script("cross_lookahead.py", "--base", str(base), "--aligned", str(aligned), "--prompts", "2", "--n", "2",
                 "--max-new-tokens", "12", "--router", "p-punc-words:0.3", "rand-words:0.5", "--threads", "1")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] and "-words" in line}
    assert int(rows["p-punc-words:0.3"][0]) > 0 and int(rows["rand-words:0.5"][0]) > 0  # word decisions
    assert rows["rand-words:0.5"][1:] == ["0", "(0%)", "0", "(0%)"]  # RAND reads neither model: never looks ahead


def gpu_check_commands() -> list[tuple[str, list[str]]]:
    """(script, flags) of each benchmark `benchmarks/gpu_check.sh` runs, its continued lines joined; a flag given
    through a shell variable (`${HF:-}`, `"${gemma_1b[@]}"`) is read from the variable's documented use."""
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text().replace("\\\n", " ")
    arrays = {name: body.split() for name, body in re.findall(r"^(\w+)=\(([^)]*)\)", text, flags=re.M)}
    commands = []
    for line in text.splitlines():
        found = re.search(r"benchmarks/(\w+\.py)(.*)", line)
        if not found or line.lstrip().startswith("#"):
            continue
        words = found.group(2).split()
        for name, values in arrays.items():
            if f'"${{{name}[@]}}"' in words:
                words += values
        commands.append((found.group(1), [w for w in words if w.startswith("--")]))
    documented = re.search(r'THROUGHPUT_FLAGS="([^"]*)"', text)  # the usage line's example
    commands.append(("throughput.py", [w for w in documented.group(1).split() if w.startswith("--")]))
    return commands


def test_every_flag_the_gpu_check_passes_is_one_its_benchmark_takes():
    """A misspelt or removed flag fails argparse on the lent GPU machine, minutes into its session: each flag of
    each benchmark line of gpu_check.sh (stages tests, stepmath, memory, 270m, compiled, oneforward, throughput,
    1b, static, real) is one that script's --help lists, and the script parses as bash."""
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
    commands = gpu_check_commands()
    assert {name for name, _ in commands} >= {"step_math.py", "engine_memory.py", "lockstep_overhead.py",
                                               "throughput.py"}
    helps = {name: script(name, "--help") for name in {name for name, _ in commands}}
    unknown = [(name, flag) for name, flags in commands for flag in flags
               if not re.search(rf"{re.escape(flag)}\b", helps[name])]
    assert not unknown, unknown
