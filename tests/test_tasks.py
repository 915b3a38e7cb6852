"""Task sets: the bundled prompts, the stratified subset, and the loaders for users' files."""

import gzip
import json
import re
import sys
import warnings
from collections import Counter
from importlib import resources

import pytest

from baco.errors import BacoError, TaskError
from baco.tasks import PROMPT_FIELDS, TaskItem, TaskWarning, list_tasks, load_task, read_task_file, select

BUNDLED_CATEGORIES = {
    "open-ended": {"creativity", "subjective", "randomness", "underspecified"},
    "dialogue": {"advice", "recommendation", "small-talk", "brainstorm"},
    "creative-writing": {"poem", "story", "slogan", "opening"},
}
MINIMUM_COUNT = {"open-ended": 120, "dialogue": 100, "creative-writing": 100}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(tmp_path, name, rows):
    return write(tmp_path, name, "".join(json.dumps(row) + "\n" for row in rows))


def normalised(text):
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


# ---------------------------------------------------------------- the bundled sets

def raw_rows(name):
    text = (resources.files("baco.tasks") / "data" / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_list_tasks_names_the_three_sets_with_their_counts_and_categories():
    infos = {info.name: info for info in list_tasks()}
    assert set(infos) == set(BUNDLED_CATEGORIES)
    for name, info in infos.items():
        rows = raw_rows(name)
        assert info.count == len(rows) >= MINIMUM_COUNT[name]
        assert info.categories == dict(Counter(row["category"] for row in rows))
        assert info.description


@pytest.mark.parametrize("name", sorted(BUNDLED_CATEGORIES))
def test_bundled_files_follow_the_documented_schema(name):
    for number, row in enumerate(raw_rows(name), start=1):
        expected_keys = {"id", "task", "category", "prompt"} | ({"messages"} if name == "dialogue" else set())
        assert set(row) == expected_keys, row
        assert row["id"] == f"{name}-{number:04d}"
        assert row["task"] == name
        assert row["category"] in BUNDLED_CATEGORIES[name]


@pytest.mark.parametrize("name", sorted(BUNDLED_CATEGORIES))
def test_bundled_set_loads_with_balanced_categories(name):
    items = load_task(name)
    assert len(items) == len(raw_rows(name)) >= MINIMUM_COUNT[name]
    counts = Counter(item.category for item in items)
    assert set(counts) == BUNDLED_CATEGORIES[name]
    assert max(counts.values()) - min(counts.values()) <= len(items) // 10  # roughly balanced
    assert all(isinstance(item, TaskItem) and item.task == name for item in items)


@pytest.mark.parametrize("name", sorted(BUNDLED_CATEGORIES))
def test_bundled_prompts_are_short_non_empty_and_unique(name):
    items = load_task(name)
    assert len({item.id for item in items}) == len(items)
    texts = [normalised(item.prompt) for item in items]
    duplicates = [text for text, count in Counter(texts).items() if count > 1]
    assert not duplicates
    for item in items:
        assert item.prompt == item.prompt.strip() and item.prompt
        assert len(item.prompt.split()) <= 25, item.prompt  # small models, ~100 new tokens: keep asks short


def test_no_prompt_is_repeated_across_the_bundled_sets():
    seen = {}
    for name in BUNDLED_CATEGORIES:
        for item in load_task(name):
            key = normalised(item.prompt)
            assert key not in seen, (item.id, seen.get(key))
            seen[key] = item.id


def test_dialogue_items_keep_their_messages_and_end_with_a_user_turn():
    items = load_task("dialogue")
    lengths = Counter(len(item.messages) for item in items)
    assert lengths[1] >= 50 and sum(n for length, n in lengths.items() if length > 1) >= 20
    for item in items:
        roles = [message["role"] for message in item.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"], item.id
        assert item.prompt == item.messages[-1]["content"]
        assert all(message["content"].strip() for message in item.messages)


def test_only_dialogue_items_carry_messages():
    assert all(item.messages is None for item in load_task("open-ended") + load_task("creative-writing"))


def test_format_and_column_do_not_apply_to_bundled_sets():
    with pytest.raises(TaskError, match="apply to files"):
        load_task("open-ended", column="prompt")


# ---------------------------------------------------------------- limit / seed: stratified subsets

def make_items(counts):
    return [TaskItem(id=f"{category}-{i}", task="t", prompt=f"{category} {i}", category=category)
            for category, n in counts.items() for i in range(n)]


def test_limit_with_a_seed_is_reproducible_and_seed_dependent():
    first = [item.id for item in load_task("open-ended", limit=20, seed=7)]
    again = [item.id for item in load_task("open-ended", limit=20, seed=7)]
    other = [item.id for item in load_task("open-ended", limit=20, seed=8)]
    assert first == again
    assert first != other
    assert len(first) == len(set(first)) == 20


def test_limit_is_stratified_by_category_on_a_balanced_set():
    items = load_task("open-ended")
    per_category = Counter(item.category for item in items)
    for limit in (4, 10, 20, 37):
        subset = load_task("open-ended", limit=limit, seed=3)
        counts = Counter(item.category for item in subset)
        assert len(subset) == limit
        for category, total in per_category.items():
            share = limit * total / len(items)
            assert int(share) <= counts[category] <= int(share) + 1, (limit, counts)


def test_limit_follows_category_proportions_on_an_unbalanced_set():
    items = make_items({"a": 60, "b": 30, "c": 10})
    for seed in (None, 0, 1, "text seed"):
        counts = Counter(item.category for item in select(items, 10, seed=seed))
        assert counts == {"a": 6, "b": 3, "c": 1}
    counts = Counter(item.category for item in select(items, 5, seed=0))  # 3, 1.5, 0.5: ties to the first seen
    assert counts == {"a": 3, "b": 2}


def test_subset_keeps_the_original_order():
    items = make_items({"a": 20, "b": 20})
    subset = select(items, 9, seed=5)
    positions = [items.index(item) for item in subset]
    assert positions == sorted(positions)


def test_limit_without_a_seed_takes_the_first_items_of_each_category():
    items = make_items({"a": 10, "b": 10})
    assert [item.id for item in select(items, 4)] == ["a-0", "a-1", "b-0", "b-1"]


def test_items_without_a_category_form_one_group():
    items = make_items({"a": 4}) + [TaskItem(id=f"x{i}", task="t", prompt="p") for i in range(4)]
    counts = Counter(item.category for item in select(items, 4, seed=1))
    assert counts == {"a": 2, None: 2}


def test_limit_at_or_above_the_size_returns_everything():
    items = load_task("creative-writing")
    assert load_task("creative-writing", limit=len(items) + 5, seed=1) == items
    assert select(items, None, seed=3) == items


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "10"])
def test_bad_limit_is_refused(limit):
    with pytest.raises(TaskError, match="limit must be a positive integer"):
        load_task("open-ended", limit=limit)


def test_numpy_integers_are_integers_for_limit_and_seed():
    np = pytest.importorskip("numpy")
    chosen = [item.id for item in load_task("open-ended", limit=8, seed=3)]
    assert [item.id for item in load_task("open-ended", limit=np.int64(8), seed=np.int64(3))] == chosen


@pytest.mark.parametrize("seed", [[1], {"a": 1}, 1.5])
def test_a_seed_that_is_not_an_integer_or_a_string_is_refused(seed):
    with pytest.raises(TaskError, match="seed must be an integer or a string"):
        load_task("open-ended", limit=4, seed=seed)


# ---------------------------------------------------------------- JSONL / JSON / text files

def test_jsonl_reads_prompt_ids_categories_and_keeps_other_fields(tmp_path):
    path = jsonl(tmp_path, "mine.jsonl", [
        {"id": "q1", "category": "fun", "prompt": " Name a river. ", "source": "me"},
        {"id": 7, "prompt": "Name a lake."},
        {"prompt": "Name a sea."},
    ])
    items = load_task(path)
    assert [item.id for item in items] == ["q1", "7", "mine-0003"]  # missing id: task name + line number
    assert [item.prompt for item in items] == ["Name a river.", "Name a lake.", "Name a sea."]
    assert [item.category for item in items] == ["fun", None, None]
    assert items[0].task == "mine" and items[0].meta == {"source": "me"}
    assert load_task(path, task="rivers")[0].task == "rivers"


def test_prompt_field_precedence(tmp_path):
    rows = [{"text": "from text", "instruction": "from instruction", "question": "from question", "prompt": "p"},
            {"text": "from text", "instruction": "from instruction", "question": "from question"},
            {"text": "from text", "instruction": "from instruction"},
            {"text": "from text"}]
    items = load_task(jsonl(tmp_path, "fields.jsonl", rows))
    assert [item.prompt for item in items] == ["p", "from question", "from instruction", "from text"]
    assert PROMPT_FIELDS == ("prompt", "question", "instruction", "text")


def test_an_alpaca_rows_input_follows_its_instruction_as_baco_eval_reads_it(tmp_path):
    # tatsu-lab/alpaca's shape: an instruction, and for many rows the text it is about
    rows = [{"instruction": "Translate to French.", "input": "Good morning.", "output": "Bonjour."},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."}]
    items = load_task(jsonl(tmp_path, "alpaca.jsonl", rows))
    assert [item.prompt for item in items] == ["Translate to French.\n\nGood morning.", "Name a colour."]
    assert items[0].meta == {"input": "Good morning.", "output": "Bonjour."}
    assert load_task(tmp_path / "alpaca.jsonl", column="instruction")[0].prompt == "Translate to French."


def test_column_picks_the_prompt_field(tmp_path):
    path = jsonl(tmp_path, "c.jsonl", [{"prompt": "not this", "query": "this one"}])
    assert load_task(path, column="query")[0].prompt == "this one"
    with pytest.raises(TaskError, match=r"c\.jsonl:1: no field 'other'.*prompt.*query"):
        load_task(path, column="other")


def test_messages_rows_prompt_with_the_last_user_turn(tmp_path):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a bird."}]
    path = jsonl(tmp_path, "chat.jsonl", [{"messages": conversation},
                                          {"prompt": "explicit", "messages": conversation[1:2]}])
    first, second = load_task(path)
    assert first.prompt == "Name a bird." and first.messages == conversation
    assert second.prompt == "explicit" and second.messages == conversation[1:2]


def test_a_prompt_field_holding_a_conversation_is_read_as_messages(tmp_path):
    # TRL's conversational prompt-only rows ({"prompt": [{"role": "user", "content": ...}]}), or column= naming one
    conversation = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Name a bird."}]
    path = jsonl(tmp_path, "trl.jsonl", [{"prompt": conversation}, {"prompt": conversation[:1]}])
    first, second = load_task(path)
    assert (first.prompt, first.messages, first.asked) == ("Name a bird.", conversation, conversation)
    assert (second.prompt, second.asked) == ("Hi.", "Hi.")
    other = jsonl(tmp_path, "turns.jsonl", [{"turns": conversation, "prompt": "not this"}])
    assert load_task(other, column="turns")[0].messages == conversation
    ended = jsonl(tmp_path, "ended.jsonl", [{"prompt": conversation + [{"role": "assistant", "content": "A wren."}]}])
    with pytest.raises(TaskError, match=r"ended\.jsonl:1: the last message must be a user turn"):
        load_task(ended)


def test_bare_json_strings_and_blank_lines(tmp_path):
    path = write(tmp_path, "strings.jsonl", '"Name a tree."\n\n"Name a flower."\n')
    items = load_task(path)
    assert [(item.id, item.prompt) for item in items] == [("strings-0001", "Name a tree."),
                                                         ("strings-0003", "Name a flower.")]


def test_unicode_line_separators_inside_a_json_lines_string_do_not_split_the_row(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028, U+2029 and U+0085 unescaped: they are text, not line ends
    rows = [{"prompt": "one\u2028two"}, {"prompt": "three\u0085four\u2029five"}, {"prompt": "six"}]
    path = write(tmp_path, "unicode.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    items = load_task(path)
    assert [item.prompt for item in items] == [row["prompt"] for row in rows]
    assert [item.id for item in items] == ["unicode-0001", "unicode-0002", "unicode-0003"]


def test_json_array_file(tmp_path):
    path = write(tmp_path, "rows.json", json.dumps([{"prompt": "One."}, {"question": "Two?"}], indent=2))
    assert [item.prompt for item in load_task(path)] == ["One.", "Two?"]


def test_a_json_file_of_one_indented_object_is_one_row_not_a_json_error(tmp_path):
    path = write(tmp_path, "one.json", json.dumps({"id": "q1", "prompt": "Name a river."}, indent=2))
    assert [(item.id, item.prompt) for item in load_task(path)] == [("q1", "Name a river.")]
    nested = write(tmp_path, "nested.json", json.dumps({"data": [{"prompt": "Name a river."}]}, indent=2))
    with pytest.raises(TaskError, match=r"nested\.json:1: no prompt field.*\['data'\]"):
        load_task(nested)


def test_json_extension_with_json_lines_inside(tmp_path):  # what `datasets` .to_json() writes by default
    path = write(tmp_path, "export.json", '{"prompt": "One."}\n{"prompt": "Two."}\n')
    assert [item.prompt for item in load_task(path)] == ["One.", "Two."]


def test_text_file_one_prompt_per_line(tmp_path):
    path = write(tmp_path, "plain.txt", "Name a fruit.\n\n  Name a vegetable.  \n")
    assert [item.prompt for item in load_task(path)] == ["Name a fruit.", "Name a vegetable."]


@pytest.mark.parametrize("name, text", [("rows.jsonl.gz", '{"prompt": "One."}\n{"question": "Two?"}\n'),
                                        ("rows.json.gz", '[{"prompt": "One."}, {"question": "Two?"}]'),
                                        ("rows.csv.gz", 'prompt\nOne.\nTwo?\n'),
                                        ("rows.txt.GZ", "One.\nTwo?\n")])
def test_a_gzip_compressed_file_is_read_as_its_inner_extension_says(tmp_path, name, text):
    # what datasets' to_json(compression="gzip") writes, and what `baco eval` reads for samples
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()))
    items = load_task(path)
    assert [item.prompt for item in items] == ["One.", "Two?"]
    assert items[0].task == "rows"  # the stem without .gz and the inner extension


def test_a_gzip_file_with_an_explicit_format_and_a_broken_one(tmp_path):
    path = tmp_path / "rows.gz"  # no inner extension: format= says what it holds
    path.write_bytes(gzip.compress(b'{"prompt": "One."}\n'))
    with pytest.raises(TaskError, match="cannot tell the format"):
        load_task(path)
    assert load_task(path, format="jsonl")[0].prompt == "One."
    torn = tmp_path / "torn.jsonl.gz"  # cut off while it was written
    torn.write_bytes(gzip.compress(b'{"prompt": "One."}\n' * 100)[:30])
    with pytest.raises(TaskError, match=r"torn\.jsonl\.gz: a gzip file that cannot be decompressed"):
        load_task(torn)
    latin = tmp_path / "latin.txt.gz"
    latin.write_bytes(gzip.compress("fine\ncaf\u00e9\n".encode("latin-1")))
    with pytest.raises(TaskError, match=r"latin\.txt\.gz:2: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        load_task(latin)


def test_column_does_not_apply_to_a_text_file(tmp_path):
    path = write(tmp_path, "plain.txt", "Name a fruit.\n")
    with pytest.raises(TaskError, match=r"plain\.txt: column= does not apply to a text file \(each line is a prompt\)"):
        load_task(path, column="prompt")


def test_explicit_format_overrides_the_extension(tmp_path):
    path = write(tmp_path, "prompts.data", '{"prompt": "A."}\n')
    with pytest.raises(TaskError, match="cannot tell the format"):
        load_task(path)
    assert load_task(path, format="jsonl")[0].prompt == "A."


# ---------------------------------------------------------------- CSV

def test_csv_with_a_default_prompt_column(tmp_path):
    path = write(tmp_path, "sheet.csv", 'id,category,question\nr1,cats,"Name a cat, any cat."\nr2,,Why?\n')
    items = load_task(path)
    assert [(item.id, item.category, item.prompt) for item in items] == [
        ("r1", "cats", "Name a cat, any cat."), ("r2", None, "Why?")]


def test_csv_with_an_explicit_column_and_a_multiline_cell(tmp_path):
    path = write(tmp_path, "sheet.csv", 'ask,note\n"line one\nline two",x\nsecond,y\n')
    items = load_task(path, column="ask")
    assert [item.prompt for item in items] == ["line one\nline two", "second"]
    assert items[0].meta == {"note": "x"}
    assert items[1].id == "sheet-0004"  # the line the row ends on


def test_csv_without_the_column_names_the_header(tmp_path):
    path = write(tmp_path, "sheet.csv", "a,b\n1,2\n")
    with pytest.raises(TaskError, match=r"sheet\.csv:2: no prompt field.*\['a', 'b'\]"):
        load_task(path)
    with pytest.raises(TaskError, match=r"sheet\.csv:2: no field 'prompt_text'"):
        load_task(path, column="prompt_text")


def test_a_csv_quote_that_is_never_closed_is_named_not_read_as_one_prompt_holding_the_rest_of_the_file(tmp_path):
    path = write(tmp_path, "sheet.csv", 'prompt\nfirst\n"stray quote,\nsecond\nthird\n')
    with pytest.raises(TaskError, match=r"sheet\.csv:3: a quoted cell .* is never closed"):
        load_task(path)
    joined = write(tmp_path, "joined.csv", 'prompt\n"quoted"tail\nsecond\n')  # text after a closing quote
    with pytest.raises(TaskError, match=r"joined\.csv:2: bad CSV"):
        load_task(joined)


def test_a_column_named_twice_in_a_csv_header_is_an_error_not_a_silently_dropped_column(tmp_path):
    path = write(tmp_path, "twice.csv", "prompt,note, prompt\nfirst,x,second\n")
    with pytest.raises(TaskError, match=r"twice\.csv:1: the header names the column 'prompt' twice"):
        load_task(path)


@pytest.mark.parametrize("name, text", [
    ("excel.csv", '\ufeffid;prompt;category\r\n1;"Name a fruit; any fruit.";food\r\n2;Why?;\r\n'),  # Excel, in locales
    # whose decimal mark is a comma
    ("tabs.csv", 'id\tprompt\tcategory\n1\tName a fruit; any fruit.\tfood\n2\tWhy?\t\n'),
    ("sheet.tsv", 'id\tprompt\tcategory\n1\tName a fruit; any fruit.\tfood\n2\tWhy?\t\n'),
])
def test_a_semicolon_or_tab_separated_table_is_read_by_the_separator_its_header_uses(tmp_path, name, text):
    items = load_task(write(tmp_path, name, text))
    assert [(item.id, item.prompt, item.category) for item in items] == [
        ("1", "Name a fruit; any fruit.", "food"), ("2", "Why?", None)]


def test_a_comma_in_the_header_keeps_commas_as_the_separator(tmp_path):
    path = write(tmp_path, "commas.csv", 'prompt,note\n"a; b",c\tc\n')
    assert [(item.prompt, item.meta) for item in load_task(path)] == [("a; b", {"note": "c\tc"})]


def test_empty_csv_is_an_error(tmp_path):
    with pytest.raises(TaskError, match="empty CSV"):
        load_task(write(tmp_path, "empty.csv", ""))


# ---------------------------------------------------------------- NoveltyBench and WildChat

NOVELTYBENCH_CURATED = [  # the shape of data/curated.jsonl; the texts are ours
    {"id": "curated-0", "category": "Creativity", "prompt": "Write a couplet about a heron.",
     "prompt_paraphrases": ["Compose a couplet on a heron.", "Two rhyming lines about a heron, please."]},
    {"id": "curated-1", "category": "Random Generation & Selection", "prompt": "Pick a random weekday."},
]
NOVELTYBENCH_WILDCHAT = [  # the shape of data/wildchat-1k.jsonl
    {"id": "WildChat-0a1b", "prompt": "Describe a tidy desk.", "original_prompt": "describe tidy desk",
     "chosen": True, "meta": {"response": {"allows_diverse_responses": True}}},
]


@pytest.mark.parametrize("format", [None, "noveltybench"])
def test_noveltybench_rows(tmp_path, format):
    curated = load_task(jsonl(tmp_path, "curated.jsonl", NOVELTYBENCH_CURATED), format=format)
    assert [(item.id, item.category, item.prompt) for item in curated] == [
        (row["id"], row["category"], row["prompt"]) for row in NOVELTYBENCH_CURATED]
    assert curated[0].meta["prompt_paraphrases"] == NOVELTYBENCH_CURATED[0]["prompt_paraphrases"]
    wild = load_task(jsonl(tmp_path, "wildchat-1k.jsonl", NOVELTYBENCH_WILDCHAT), format=format)
    assert wild[0].id == "WildChat-0a1b" and wild[0].prompt == "Describe a tidy desk."
    assert wild[0].meta["original_prompt"] == "describe tidy desk"


def test_noveltybench_format_requires_id_and_prompt(tmp_path):
    path = jsonl(tmp_path, "nb.jsonl", [NOVELTYBENCH_CURATED[0], {"question": "Where?"}])
    with pytest.raises(TaskError, match=r"nb\.jsonl:2: a NoveltyBench row needs 'id' and 'prompt'"):
        load_task(path, format="noveltybench")


def wildchat_row(hash_, *turns, **extra):
    roles = ["user", "assistant"]
    return {"conversation_hash": hash_, "model": "gpt-3.5-turbo", "language": "English", "turn": len(turns),
            "conversation": [{"role": roles[i % 2], "content": text, "language": "English", "toxic": False}
                             for i, text in enumerate(turns)], **extra}


@pytest.mark.parametrize("format", [None, "wildchat"])
def test_wildchat_rows_prompt_with_the_first_user_turn(tmp_path, format):
    rows = [wildchat_row("h1", "Plan a picnic.", "Sure: ...", "Now shorter."),
            wildchat_row("h2", "Name a comet.", "Halley.", openai_moderation=[{"flagged": False}])]
    items = load_task(jsonl(tmp_path, "wildchat.jsonl", rows), format=format)
    assert [(item.id, item.prompt) for item in items] == [("WildChat-h1", "Plan a picnic."),
                                                         ("WildChat-h2", "Name a comet.")]
    assert items[1].messages is None
    assert items[1].meta == {"conversation_hash": "h2", "model": "gpt-3.5-turbo", "language": "English", "turn": 2}


def test_wildchat_json_array_export_and_older_conversation_id(tmp_path):
    row = wildchat_row(None, "Suggest a hat.", "A beret.")
    del row["conversation_hash"]
    row["conversation_id"] = "c9"
    path = write(tmp_path, "wildchat.json", json.dumps([row]))
    assert [(item.id, item.prompt) for item in load_task(path, format="wildchat")] == [("WildChat-c9", "Suggest a hat.")]


def test_wildchat_repeats_and_rows_without_a_user_turn_are_skipped_and_counted(tmp_path):
    rows = [wildchat_row("h1", "First."), wildchat_row("h1", "First."),
            {"conversation_hash": "h3", "conversation": [{"role": "assistant", "content": "Hi"}]},
            wildchat_row("h4", "   ")]
    with pytest.warns(TaskWarning) as caught:
        items = load_task(jsonl(tmp_path, "wc.jsonl", rows))
    assert [item.id for item in items] == ["WildChat-h1"]
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 2
    assert re.search(r"skipped 1 row\(s\) with a repeated WildChat conversation: .*wc\.jsonl:2$", messages[0])
    assert re.search(r"skipped 2 row\(s\) with no \(or an empty\) first user turn: .*wc\.jsonl:3, .*wc\.jsonl:4$",
                     messages[1])


def test_wildchat_format_needs_a_conversation_list(tmp_path):
    path = jsonl(tmp_path, "wc.jsonl", [wildchat_row("h1", "Fine."), {"conversation": "not a list"}])
    with pytest.raises(TaskError, match=r"wc\.jsonl:2: a WildChat row needs a 'conversation' list"):
        load_task(path, format="wildchat")


def test_wildchat_format_refuses_csv(tmp_path):
    with pytest.raises(TaskError, match="reads .jsonl, .json or .parquet"):
        load_task(write(tmp_path, "wc.csv", "conversation\nx\n"), format="wildchat")


def test_parquet_rows(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [wildchat_row("p1", "Name a moon.", "Io."), wildchat_row("p2", "Name a cloud.", "Cirrus.")]
    pq.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "train-00000.parquet")
    items = load_task(tmp_path / "train-00000.parquet")
    assert [(item.id, item.prompt) for item in items] == [("WildChat-p1", "Name a moon."), ("WildChat-p2", "Name a cloud.")]


def test_integer_categories_are_kept_as_strings_and_stratify(tmp_path):
    # a `datasets` ClassLabel column is stored as integers in JSONL and parquet exports
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"prompt": [f"Prompt {n}." for n in range(6)], "category": [0, 0, 0, 0, 1, 1]}), path)
    items = load_task(path)
    assert [item.category for item in items] == ["0", "0", "0", "0", "1", "1"]
    assert Counter(item.category for item in load_task(path, limit=3)) == {"0": 2, "1": 1}


def test_parquet_without_pyarrow_says_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(TaskError, match=r"train\.parquet: reading parquet files needs pyarrow \(pip install pyarrow\)"):
        load_task(path)


# ---------------------------------------------------------------- bad input: clear errors naming file and line

def test_task_error_is_a_baco_error():
    assert issubclass(TaskError, BacoError)


def test_a_non_json_line_is_named(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"prompt": "ok"}\n\n{"prompt": oops}\n')
    with pytest.raises(TaskError, match=r"bad\.jsonl:3: not valid JSON"):
        load_task(path)


def test_broken_json_array_names_its_line(tmp_path):
    path = write(tmp_path, "bad.json", '[\n {"prompt": "a"},\n {"prompt": }\n]')
    with pytest.raises(TaskError, match=r"bad\.json:3: not valid JSON"):
        load_task(path)


def test_a_row_without_a_prompt_field_lists_its_fields(tmp_path):
    path = jsonl(tmp_path, "rows.jsonl", [{"prompt": "fine"}, {"body": "x", "title": "y"}])
    with pytest.raises(TaskError, match=r"rows\.jsonl:2: no prompt field; expected one of prompt, question, "
                                        r"instruction, text or 'messages' \(fields: \['body', 'title'\]\)"):
        load_task(path)


def test_a_non_object_row_is_named(tmp_path):
    with pytest.raises(TaskError, match=r"rows\.jsonl:1: expected an object with a prompt field, got list"):
        load_task(write(tmp_path, "rows.jsonl", "[1, 2]\n"))


@pytest.mark.parametrize("row, message", [
    ({"prompt": 42}, "field 'prompt' must be a string or a list of {role, content} messages, got int"),
    ({"prompt": "x", "id": 1.5}, "'id' must be a string or an integer"),
    ({"prompt": "x", "category": ["a"]}, "'category' must be a string or an integer"),
    ({"prompt": "x", "category": True}, "'category' must be a string or an integer, got bool"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "the last message must be a user turn, got 'assistant'"),
    ({"messages": [{"role": "human", "content": "a"}]}, "message 0 has role 'human'"),
    ({"messages": [{"role": "user"}]}, "message 0 must be an object with a 'content' string"),
    ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, "message 0 is empty"),
])
def test_bad_rows_are_named_with_their_line(tmp_path, row, message):
    path = jsonl(tmp_path, "rows.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(TaskError, match=re.escape(f"rows.jsonl:2: {message}")):
        load_task(path)


def test_empty_prompts_are_skipped_with_a_count(tmp_path):
    path = jsonl(tmp_path, "rows.jsonl", [{"prompt": "a"}, {"prompt": ""}, {"prompt": "b"}, {"prompt": "  \n"},
                                          {"prompt": None}])
    with pytest.warns(TaskWarning, match=r"rows\.jsonl: skipped 3 row\(s\) with an empty prompt: "
                                         r".*rows\.jsonl:2, .*rows\.jsonl:4, .*rows\.jsonl:5$"):
        items = load_task(path)
    assert [item.prompt for item in items] == ["a", "b"]


def test_empty_csv_cells_are_skipped_with_a_count(tmp_path):
    path = write(tmp_path, "s.csv", "prompt\nfirst\n\"\"\nthird\n")
    with pytest.warns(TaskWarning, match=r"skipped 1 row\(s\) with an empty prompt: .*s\.csv:3$"):
        assert [item.prompt for item in load_task(path)] == ["first", "third"]


def test_a_file_with_no_usable_prompt_is_an_error(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskWarning)
        with pytest.raises(TaskError, match=r"no prompts found \(every row was skipped\)"):
            load_task(jsonl(tmp_path, "rows.jsonl", [{"prompt": ""}]))
    with pytest.raises(TaskError, match="no prompts found"):
        load_task(write(tmp_path, "blank.jsonl", "\n\n"))


def test_duplicate_ids_name_both_lines(tmp_path):
    path = jsonl(tmp_path, "rows.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"},
                                          {"id": "a", "prompt": "z"}])
    with pytest.raises(TaskError, match=r"rows\.jsonl:3: duplicate id 'a' \(first at .*rows\.jsonl:1\)"):
        load_task(path)


def test_missing_file_unknown_name_and_unknown_format(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'open-ended-v2'.*open-ended, dialogue, creative-writing"):
        load_task("open-ended-v2")
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "nope.jsonl")
    with pytest.raises(TaskError, match=re.escape(f"prompts file {str(tmp_path)!r} is a folder")):
        read_task_file(tmp_path)
    with pytest.raises(TaskError, match="unknown format 'xml'"):
        read_task_file(write(tmp_path, "a.jsonl", '{"prompt": "a"}\n'), format="xml")


def test_column_does_not_combine_with_a_fixed_schema(tmp_path):
    with pytest.raises(TaskError, match="column= does not apply"):
        load_task(jsonl(tmp_path, "nb.jsonl", NOVELTYBENCH_CURATED), format="noveltybench", column="prompt")


def test_non_utf8_file_is_an_error(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(TaskError, match=r"latin\.jsonl:1: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        load_task(path)
