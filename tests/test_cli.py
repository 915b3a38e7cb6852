"""`baco generate` and `baco routers` end to end on the tiny pair."""

import json
import re
import subprocess
import sys

import pytest

from baco.cli import main, read_prompts
from baco.decode.records import read_jsonl
from baco.display import COLOURS, RESET, render


def test_generate_writes_one_jsonl_line_per_sample(tiny_dirs, tmp_path, capsys):
    base, aligned = map(str, tiny_dirs)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a fruit."}\n"Tell me a joke."\n')
    out = tmp_path / "samples.jsonl"
    code = main(["generate", "--base", base, "--aligned", aligned, "--prompts", str(prompts), "--n", "3",
                 "--router", "p-punc:0.4", "--max-new-tokens", "12", "--seed", "7", "--out", str(out)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 6
    rows = [json.loads(line) for line in lines]
    assert {(r["prompt_index"], r["sample_index"]) for r in rows} == {(p, k) for p in range(2) for k in range(3)}
    for r in rows:
        assert r["router"] == "p-punc:0.4" and r["sampling"]["seed"] == 7
        assert len(r["sources"]) == len(r["token_ids"]) == r["num_tokens"]
        assert set(r["sources"]) <= {"base", "aligned"}
        assert r["finish_reason"] in ("stop", "length") and r["tokens_per_s"] > 0
    assert "base wrote" in capsys.readouterr().err
    assert [s.token_ids for s in read_jsonl(out)] == [r["token_ids"] for r in rows]


def test_generate_takes_the_penalties_and_each_sample_records_them(tiny_dirs, tmp_path):
    base, aligned = map(str, tiny_dirs)
    argv = ["generate", "--base", base, "--aligned", aligned, "--prompt", "Name a fruit.", "--max-new-tokens", "16",
            "--seed", "2", "--temperature", "0", "--quiet"]
    plain, penalised = tmp_path / "plain.jsonl", tmp_path / "penalised.jsonl"
    assert main([*argv, "--out", str(plain)]) == 0
    assert main([*argv, "--repetition-penalty", "1.5", "--frequency-penalty", "1", "--logit-bias", '{"5": 3}',
                 "--stop-token-ids", "511", "300", "--min-tokens", "9", "--out", str(penalised)]) == 0
    row, before = json.loads(penalised.read_text()), json.loads(plain.read_text())
    assert row["sampling"]["repetition_penalty"] == 1.5 and row["sampling"]["frequency_penalty"] == 1
    assert row["sampling"]["logit_bias"] == {"5": 3.0} and "logit_bias" not in before["sampling"]
    assert row["sampling"]["stop_token_ids"] == [300, 511] and "stop_token_ids" not in before["sampling"]
    assert row["sampling"]["min_tokens"] == 9 and "min_tokens" not in before["sampling"]
    assert "presence_penalty" not in row["sampling"] and "repetition_penalty" not in before["sampling"]
    assert row["token_ids"] != before["token_ids"]


def test_generate_says_a_mixture_wrote_a_soft_methods_tokens_rather_than_base_0_percent(tiny_dirs, capsys):
    """eft/proxy/contrast draw every token from a mixture of both models: "base wrote 0%" alone read as if the
    aligned model had written them. The per-sample header and the summary name the mixture's share."""
    base, aligned = map(str, tiny_dirs)
    argv = ["generate", "--base", base, "--aligned", aligned, "--prompt", "Name a fruit.", "--n", "2",
            "--max-new-tokens", "6", "--seed", "1", "--color", "never"]
    assert main([*argv, "--router", "eft:0.5"]) == 0
    out = capsys.readouterr()
    assert out.out.count("base wrote 0%, a mixture of both 100%") == 2
    assert ", base wrote 0%, a mixture of both 100%, " in out.err
    assert main([*argv, "--router", "p-punc:0.5"]) == 0
    assert "mixture" not in "".join(capsys.readouterr())


def test_generate_carries_each_prompts_rows_own_id_into_its_samples_as_item_id(tiny_dirs, tmp_path):
    """A prompts file's `id` (a dataset's question id, as a Batch API's `custom_id`) is how its samples are joined
    back to references and labels: every sample of the row carries it as `item_id`, as a sweep's samples do
    (`id` is the sample's own). A resumed run's new samples carry it too."""
    base, aligned = map(str, tiny_dirs)
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "q-17", "prompt": "Name a fruit."}, {"id": 4, "question": "Tell me a joke."},
            {"id": "talk-1", "messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hey."},
                                           {"role": "user", "content": "Name a fruit."}]}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "samples.jsonl"
    command = ["generate", "--base", base, "--aligned", aligned, "--prompts", str(prompts), "--max-new-tokens", "3",
               "--seed", "1", "--quiet", "--out", str(out)]
    assert main([*command, "--n", "2"]) == 0
    assert main([*command, "--n", "3"]) == 0  # the third sample of each row is made by the rerun
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(samples) == 9 and len({s["id"] for s in samples}) == 9
    assert {(s["prompt_index"], s["item_id"]) for s in samples} == {(0, "q-17"), (1, "4"), (2, "talk-1")}
    text = tmp_path / "prompts.txt"  # a row without an id gets the one a sweep gives it: the file's name and line
    text.write_text("\nName a fruit.\n")
    assert main([*command[:5], "--prompts", str(text), "--max-new-tokens", "3", "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text().splitlines()[-1])["item_id"] == "prompts-0002"
    assert main([*command[:5], "--prompt", "Hi.", "--max-new-tokens", "3", "--quiet", "--out", str(out)]) == 0
    assert "item_id" not in json.loads(out.read_text().splitlines()[-1])  # a --prompt is no file's row


def test_generate_out_dash_writes_the_samples_as_json_lines_on_stdout(tiny_dirs, tmp_path, capfd, monkeypatch):
    """`--out -` pipes the samples (`baco generate ... --out - | jq`), as `curl -o -` does: stdout holds only JSON
    Lines, the rows a file would get (ids included); no file named "-" is made. A pipe is written the same way."""
    import os

    monkeypatch.chdir(tmp_path)
    base, aligned = map(str, tiny_dirs)
    command = ["generate", "--base", base, "--aligned", aligned, "--prompt", "Name a fruit.", "--prompt", "Hi.",
               "--n", "2", "--max-new-tokens", "4", "--seed", "3"]
    assert main([*command, "--out", "-"]) == 0
    piped = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert not os.path.exists("-")
    assert main([*command, "--quiet", "--out", "samples.jsonl"]) == 0
    stored = [json.loads(line) for line in open("samples.jsonl")]
    drop = ("elapsed_s", "tokens_per_s")
    assert [{k: v for k, v in row.items() if k not in drop} for row in piped] == [
        {k: v for k, v in row.items() if k not in drop} for row in stored]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    assert main([*command, "--quiet", "--out", str(fifo)]) == 0
    assert [json.loads(line)["id"] for line in reader.communicate()[0].splitlines()] == [row["id"] for row in stored]
    assert not (tmp_path / ".pipe.lock").exists()


def test_generate_makes_the_out_files_missing_folders_as_eval_does(tiny_dirs, tmp_path):
    base, aligned = map(str, tiny_dirs)
    out = tmp_path / "runs" / "x" / "samples.jsonl"
    assert main(["generate", "--base", base, "--aligned", aligned, "--prompt", "Name a fruit.", "--max-new-tokens", "4",
                 "--quiet", "--out", str(out)]) == 0
    assert [s.prompt for s in read_jsonl(out)] == ["Name a fruit."]


def test_colours_mark_who_wrote_each_token(collab):
    from baco import SamplingParams

    sample = collab.generate("Name a fruit.", router="rand:0.5", sampling=SamplingParams(max_new_tokens=20, seed=1))[0]
    coloured = render(sample, colour=True)
    assert COLOURS["base"] in coloured and COLOURS["aligned"] in coloured and RESET in coloured
    plain = coloured
    for code in (*COLOURS.values(), RESET):
        plain = plain.replace(code, "")
    assert plain == "".join(sample.token_texts).lstrip()[: len(plain)]
    assert render(sample, colour=False) == sample.text


def test_control_characters_a_model_writes_reach_a_terminal_as_visible_escapes(collab):
    """An ESC sequence in a sample (tiny and small models write them) must not clear, move or recolour the user's
    terminal; the sample's own text (what --out stores) keeps it."""
    from dataclasses import replace

    from baco import SamplingParams
    from baco.display import printable

    sample = collab.generate("Name a fruit.", router="rand:0.5", sampling=SamplingParams(max_new_tokens=6, seed=1))[0]
    hostile = ["A", "\x1b[2J", "b\rc", "\td\n", "\x9b"]
    sample = replace(sample, token_texts=hostile, text="".join(hostile), sources=["base", "aligned"] * 2 + ["base"])
    assert printable(sample.text) == "A\\x1b[2Jb\\x0dc\td\n\\x9b"
    assert render(sample, colour=False, terminal=True) == printable(sample.text)
    assert render(sample, colour=False) == sample.text  # a pipe gets the text as written
    coloured = render(sample, colour=True, terminal=True)
    assert "\x1b[2J" not in coloured and "\\x1b[2J" in coloured and "\r" not in coloured
    assert coloured.count("\x1b") == 2 * 5  # only the colour codes: one and a reset per run


def test_routers_command_lists_every_router(capsys):
    assert main(["routers"]) == 0
    listed = capsys.readouterr().out
    for name in ("p-punc:THRESHOLD", "h:THRESHOLD", "punc", "fc", "rand:PROB", "aligned"):
        assert name in listed


def test_bad_prompts_file_names_the_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    import pytest

    from baco.errors import BacoError

    with pytest.raises(BacoError, match=r"p.jsonl:2: not valid JSON"):
        read_prompts(bad)


def test_a_csv_prompts_file_is_read_as_csv_not_as_lines_of_text(tmp_path):
    """`--prompts prompts.csv` must not turn the header and raw CSV lines (quotes, commas) into prompts."""
    path = tmp_path / "prompts.csv"
    path.write_text('question,category\n"Name a fruit, then a colour.",food\nWhy is the sky blue?,science\n')
    assert read_prompts(path) == ["Name a fruit, then a colour.", "Why is the sky blue?"]
    array = tmp_path / "prompts.json"  # a JSON array, as load_task reads it
    array.write_text('[{"prompt": "Name a fruit."}, "Why is the sky blue?"]')
    assert read_prompts(array) == ["Name a fruit.", "Why is the sky blue?"]


def test_an_ndjson_prompts_file_is_read_as_json_lines_as_load_task_reads_it(tmp_path):
    """`.ndjson` is JSON Lines by another name: its rows' prompts, not the rows' raw text, are the prompts."""
    path = tmp_path / "prompts.ndjson"
    path.write_text('{"prompt": "Name a fruit."}\n"Why is the sky blue?"\n')
    assert read_prompts(path) == ["Name a fruit.", "Why is the sky blue?"]


def test_a_gzip_compressed_json_lines_prompts_file_is_read_as_json_lines_not_as_lines_of_text(tmp_path):
    """`--prompts prompts.jsonl.gz` reads the rows' prompts, as load_task does, not each raw JSON line as a prompt."""
    import gzip

    path = tmp_path / "prompts.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "Name a fruit."}\n"Why is the sky blue?"\n'))
    assert read_prompts(path) == ["Name a fruit.", "Why is the sky blue?"]


def test_every_prompts_format_reads_the_same_fields_and_refuses_an_empty_prompt_by_its_line(tmp_path):
    """JSON Lines reads the fields a table does (prompt, question, instruction, text, chat messages); an empty prompt
    is an error naming its line in every format (a table's empty row was skipped, a JSONL one refused). A
    conversation is read whole."""
    from baco.errors import BacoError

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "Why is the sky blue?"}\n{"instruction": "Name a fruit."}\n'
                    '{"messages": [{"role": "user", "content": "Hi."}]}\n')
    assert read_prompts(rows) == ["Why is the sky blue?", "Name a fruit.", "Hi."]
    for name, text, where in (("e.csv", "prompt\nfine\n\"  \"\n", ":3"), ("e.json", '["fine", ""]', ": row 2"),
                              ("e.jsonl", '"fine"\n{"prompt": ""}\n', ":2")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(BacoError, match=f"{re.escape(str(path))}{where}: the prompt is empty"):
            read_prompts(path)
    talk = tmp_path / "talk.jsonl"  # a conversation is given whole: its earlier turns are the answer's context
    turns = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Name a fruit."}]
    talk.write_text('"fine"\n' + json.dumps({"messages": turns}) + "\n")
    assert read_prompts(talk) == ["fine", turns]
    talk.write_text(json.dumps({"messages": turns[:1] + turns}) + "\n")  # user, user: no chat template takes it
    with pytest.raises(BacoError, match=f"{re.escape(str(talk))}:1: 'messages' must alternate user and assistant"):
        read_prompts(talk)
    other = tmp_path / "prompts.md"  # another extension: lines of text
    other.write_text("Name a fruit.\n\nWhy is the sky blue?\n")
    assert read_prompts(other) == ["Name a fruit.", "Why is the sky blue?"]


def test_column_reads_each_prompt_from_the_named_field_of_any_table_and_is_refused_where_it_cannot_apply(
        tiny_dirs, tmp_path, monkeypatch, capsys):
    """`--column FIELD` (as `load_task(column=)` and a sweep task's `column:`): a dataset whose prompts sit in a field
    of another name (`query`, `input`) is read without renaming it first, in every table format and from standard
    input; a row without the field is named with its line; text, a missing --prompts or an empty name are refused
    before any model loads."""
    import io
    from pathlib import Path

    from baco.errors import BacoError

    rows = [{"id": "a", "query": "Name a fruit.", "prompt": "not this"}, {"id": "b", "query": "Why is the sky blue?"}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = tmp_path / "rows.csv"
    table.write_text('query,prompt\nName a fruit.,not this\n"Why is the sky blue?",\n')
    for path in (jsonl, table):
        assert read_prompts(path, column="query") == ["Name a fruit.", "Why is the sky blue?"]
    first = tmp_path / "first.jsonl"  # without it: the first known field; and an error that points to --column
    first.write_text(jsonl.read_text().splitlines()[0] + "\n")
    assert read_prompts(first) == ["not this"]
    with pytest.raises(BacoError, match=r"rows.jsonl:2: no prompt field; .* \(fields: \['id', 'query'\]\); "
                                        r"--column FIELD reads the prompts from another field"):
        read_prompts(jsonl)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(jsonl.read_bytes())))
    assert read_prompts(Path("-"), column="query") == ["Name a fruit.", "Why is the sky blue?"]
    lacking = tmp_path / "lacking.jsonl"
    lacking.write_text('{"query": "ok"}\n{"prompt": "no query here"}\n')
    with pytest.raises(BacoError, match=re.escape(f"{lacking}:2: no field 'query' (fields: ['prompt'])")):
        read_prompts(lacking, column="query")
    text = tmp_path / "lines.txt"
    text.write_text("Name a fruit.\n")
    with pytest.raises(BacoError, match=re.escape(f"{text}: --column does not apply to text (each line is a prompt)")):
        read_prompts(text, column="query")

    base, aligned = map(str, tiny_dirs)
    out = tmp_path / "out.jsonl"
    common = ["generate", "--base", base, "--aligned", aligned, "--n", "1", "--max-new-tokens", "2", "--quiet",
              "--device", "cpu", "--seed", "0", "--out", str(out)]
    for bad, message in ((["--prompt", "Hi", "--column", "query"], "--column names the field of a --prompts file"),
                         (["--prompts", str(jsonl), "--column", " "], "--column is empty")):
        assert main(common + bad) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    assert main(common + ["--prompts", str(jsonl), "--column", "query"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["prompt"], row["item_id"]) for row in written] == [("Name a fruit.", "a"), ("Why is the sky blue?", "b")]


def test_prompts_can_come_from_stdin_or_a_pipe_json_lines_or_text(tmp_path, monkeypatch):
    """`--prompts -` reads standard input, and a named pipe (`--prompts <(jq ...)`, /dev/stdin) is read as a
    file is, not refused as missing: JSON Lines when its first row is a JSON object, else one prompt per line;
    an error names the stream and its line."""
    import io
    import os
    import threading
    from pathlib import Path

    from baco.errors import BacoError

    def stdin(text):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))

    stdin('\n{"prompt": "Name a fruit."}\n{"messages": [{"role": "user", "content": "Hi."}]}\n"Why?"\n')
    assert read_prompts(Path("-")) == ["Name a fruit.", "Hi.", "Why?"]
    stdin('{"prompt": "a line\u2028separator"}\n')  # JSON allows U+2028 in a string: not a line end
    assert read_prompts(Path("-")) == ["a line\u2028separator"]
    stdin("Name a fruit.\n\n{braces} are text here\n")
    assert read_prompts(Path("-")) == ["Name a fruit.", "{braces} are text here"]
    stdin('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(BacoError, match=r"^<stdin>:2: the prompt is empty"):
        read_prompts(Path("-"))
    stdin("")
    with pytest.raises(BacoError, match=r"<stdin>: no prompts"):
        read_prompts(Path("-"))
    for name, text, expected in (("pipe", '{"question": "Why?"}\n', ["Why?"]),
                                 ("pipe.txt", '{"a": 1}\n', ['{"a": 1}'])):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        writer = threading.Thread(target=fifo.write_text, args=(text,))
        writer.start()
        assert read_prompts(fifo) == expected  # a pipe's extension, if any, says its format as a file's does
        writer.join()


def test_help_states_each_default_once(capsys, monkeypatch):
    """A flag whose help already names its default (`--base`: the embedded pair) must not also say `(default: None)`."""
    import pytest

    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag
    for command in ("generate", "serve", "eval", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        listing = capsys.readouterr().out
        assert "(default: None)" not in listing, command
        assert all(line.count("(default:") <= 1 for line in listing.splitlines()), command


def test_help_shows_the_default_of_every_flag_that_has_one():
    """A newcomer reads defaults off `--help` (argparse prints nothing, not even the default, for a flag
    without help text): every flag with a default other than none or off says what it is."""
    import argparse

    from baco.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = []
    for name, command in commands.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            if not action.help or "default" not in formatter._get_help_string(action):
                silent.append(f"baco {name} {action.option_strings[0]}")
    assert silent == []


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "baco.cli", "routers"], capture_output=True, text=True)
    assert done.returncode == 0 and "p-punc" in done.stdout


def test_a_closed_stdout_pipe_ends_a_command_quietly_with_sigpipes_exit_code():
    """`baco routers | head -1`: the reader is gone before the output is flushed (at the end, not mid-print)."""
    child = subprocess.Popen([sys.executable, "-m", "baco.cli", "routers"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.stdout.close()  # before the child (still importing) writes anything
    err = child.stderr.read()
    assert child.wait(timeout=300) == 141 and err == ""


def test_a_pipe_closed_mid_output_ends_a_command_quietly(monkeypatch, capsys):
    """`baco check RUN --verbose | head -3`: a print fails with BrokenPipeError; no error text, no traceback."""
    import io

    class ClosedPipe(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["routers"]) == 141
    assert capsys.readouterr().err == ""


def test_generate_threads_flag_sets_torch_threads_and_refuses_zero(tiny_dirs, tmp_path, capsys):
    import torch

    from baco.cli import main

    base, aligned = map(str, tiny_dirs)
    common = ["generate", "--base", base, "--aligned", aligned, "--prompt", "Hi", "--n", "1",
              "--max-new-tokens", "2", "--quiet", "--device", "cpu"]
    before = torch.get_num_threads()
    assert main(common + ["--threads", "0"]) == 2
    assert "--threads must be an integer >= 1, got 0" in capsys.readouterr().err
    assert torch.get_num_threads() == before
    target = 2 if before == 1 else 1  # not the present count, or the check could not fail
    try:
        assert main(common + ["--threads", str(target), "--out", str(tmp_path / "o.jsonl")]) == 0
        assert torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)


def test_newlines_typed_in_a_template_flag_are_newlines(tiny_dirs):
    r"""A shell passes `\n` literally: `--base-template 'Q: {prompt}\nA:'` (as the README writes the default)
    means a line break, so the base model reads "Q: ...<newline>A:" and the derived stop string matches it."""
    from baco.cli import _models_and_format, build_parser

    base, aligned = map(str, tiny_dirs)
    args = build_parser().parse_args(["generate", "--base", base, "--aligned", aligned, "--prompt", "Hi",
                                      "--base-template", r"Q: {prompt}\nA:", "--system-prompt", r"Be brief.\tThanks.\\n"])
    _, _, fmt, _ = _models_and_format(args)
    assert fmt.render_base("Why?") == "Be brief.\tThanks.\\n\n\nQ: Why?\nA:"
    assert fmt.stop_strings == ("\nQ:",)


def test_a_blank_system_prompt_is_no_system_prompt():
    from baco.prompts import PromptFormat

    assert PromptFormat(system_prompt="  \n") == PromptFormat()
    assert PromptFormat(system_prompt="  \n").render_base("Why?") == PromptFormat().render_base("Why?")
