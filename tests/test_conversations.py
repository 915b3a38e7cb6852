"""A prompt may be a conversation to continue: a list of {"role", "content"} messages ending in a user turn.

Specification: each model reads the earlier turns as it reads few-shot examples (the aligned model as chat turns,
the base model in its template), under the conversation's system message; the samples record the whole
conversation, and everything that identifies a prompt's samples (their random streams, their ids in a --out file,
the evaluation's prompt groups, a sweep's plan) tells two conversations apart even when they end in the same turn.
"""

import json

import pytest

from baco import SamplingParams
from baco.cli import main
from baco.decode.records import Sample, read_jsonl
from baco.errors import PromptError
from baco.evaluate.io import group_records, read_records
from baco.prompts import PromptFormat, prompt_key
from baco.tasks import TaskItem

HI = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Name a fruit."}]
ABOUT_DRAGONS = [{"role": "system", "content": "Answer in one word."},
                 {"role": "user", "content": "I love dragons."}, {"role": "assistant", "content": "Me too."},
                 {"role": "user", "content": "Name a fruit."}]
GREEDY = SamplingParams(temperature=0, max_new_tokens=8, seed=3)


def test_a_conversation_is_rendered_as_its_earlier_turns_followed_by_its_last_user_turn(collab):
    fmt = PromptFormat(system_prompt="Answer in one word.", few_shot=(("I love dragons.", "Me too."),))
    request = collab.requests([ABOUT_DRAGONS], 1, GREEDY, seed=3)[0]
    tokenizer = collab.pair.aligned.tokenizer
    assert request.aligned_ids == tokenizer(fmt.render_aligned("Name a fruit.", tokenizer),
                                            add_special_tokens=False)["input_ids"]
    assert request.base_ids == tokenizer(fmt.render_base("Name a fruit."))["input_ids"]
    assert request.prompt == "Name a fruit." and request.messages == ABOUT_DRAGONS
    # and it decodes what that rendering decodes (greedy: the random streams play no part)
    alone = collab.generate("Name a fruit.", GREEDY, router="aligned")[0]
    with_context = collab.generate([ABOUT_DRAGONS], GREEDY, router="aligned")[0]
    from baco import Collaboration
    as_format = Collaboration(collab.pair, fmt).generate("Name a fruit.", GREEDY, router="aligned")[0]
    assert with_context.token_ids == as_format.token_ids
    assert with_context.text == as_format.text
    assert alone.token_ids != with_context.token_ids or alone.text == with_context.text  # (context may not matter)


def test_samples_record_the_conversation_and_a_one_turn_conversation_is_the_plain_prompt(collab):
    sampling = SamplingParams(max_new_tokens=6, seed=11)
    plain, talk = collab.generate(["Name a fruit.", HI], sampling)
    (one_turn,) = collab.generate([[{"role": "user", "content": "Name a fruit."}]], sampling)
    assert one_turn.messages is None and one_turn.token_ids == plain.token_ids and one_turn.seed != talk.seed
    both = collab.generate(["Name a fruit.", [{"role": "user", "content": "Name a fruit."}]], sampling)
    assert both[1].occurrence == 1  # in one list, the same prompt twice: its second copy
    assert talk.prompt == "Name a fruit." and talk.messages == HI
    assert "messages" not in plain.to_dict() and talk.to_dict()["messages"] == HI
    assert Sample.from_dict(json.loads(json.dumps(talk.to_dict()))).messages == HI
    # one conversation alone is one prompt, as vLLM's LLM.chat takes it
    assert [s.token_ids for s in collab.generate(HI, sampling)] == [talk.token_ids]
    streamed = [event.token_id for event in collab.stream(HI, sampling)]
    assert streamed == talk.token_ids


def test_two_conversations_ending_in_the_same_turn_are_two_prompts(collab):
    sampling = SamplingParams(max_new_tokens=6, seed=5)
    first, second, again = collab.generate([HI, ABOUT_DRAGONS, HI], sampling)
    assert first.seed != second.seed  # the whole conversation seeds a row's streams, not its last turn
    assert (first.occurrence, second.occurrence, again.occurrence) == (0, 0, 1)  # HI repeated: its second copy
    assert prompt_key(HI) != prompt_key(ABOUT_DRAGONS) != "Name a fruit."


@pytest.mark.parametrize("bad, problem", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must alternate user and assistant"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "end with a user turn"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": " "}],
     "ends with an empty user message"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
     "system or developer messages after its turns began"),
    ([{"role": "tool", "content": "a"}], "role 'tool'"),
    ([{"role": "user", "content": 3}], "content is neither a string nor a list of text parts"),
    ([], "must be a string or a non-empty list of messages"),
])
def test_a_conversation_that_no_chat_template_takes_is_refused_by_its_place_before_any_model_runs(collab, bad,
                                                                                                 problem):
    with pytest.raises(PromptError, match=f"prompt 1 .*{problem}"):
        collab.generate(["Name a fruit.", bad], SamplingParams(max_new_tokens=2))


def test_generate_reads_conversations_from_the_prompts_file_and_resumes_by_conversation(tiny_dirs, tmp_path, capsys):
    base, aligned = tiny_dirs
    prompts, out = tmp_path / "talks.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (HI, ABOUT_DRAGONS)))
    args = ["generate", "--base", str(base), "--aligned", str(aligned), "--device", "cpu", "--prompts", str(prompts),
            "--n", "2", "--max-new-tokens", "5", "--seed", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"] for r in sorted(rows, key=lambda r: (r["prompt_index"], r["sample_index"]))] == \
        [HI, HI, ABOUT_DRAGONS, ABOUT_DRAGONS]
    assert len({r["id"] for r in rows}) == 4 and {s.messages == HI for s in read_jsonl(out)} == {True, False}
    capsys.readouterr()
    assert main(args) == 0  # both conversations end in "Name a fruit.": each is found by all its messages
    assert "all 4 samples are already in" in capsys.readouterr().err
    prompts.write_text(json.dumps({"messages": ABOUT_DRAGONS}) + "\n")  # one left, moved to the first place
    assert main(args) == 0
    assert len(read_jsonl(out)) == 4


def test_the_evaluation_groups_responses_by_conversation(tmp_path):
    path = tmp_path / "chats.jsonl"
    reply = {"role": "assistant", "content": "A pear."}
    rows = [{"messages": HI + [reply]}, {"messages": ABOUT_DRAGONS + [reply]}, {"messages": HI + [reply]},
            {"messages": [HI[-1], reply]}]  # the last: the turn asked alone
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = read_records([path])
    groups = group_records(records)
    assert sorted(len(rows) for rows in groups.values()) == [1, 1, 2]
    assert {r.prompt for r in records} == {"Name a fruit."}
    assert records[0].messages == HI and records[3].messages is None


def test_a_task_item_with_earlier_turns_asks_its_conversation():
    talk = TaskItem(id="t-1", task="t", prompt="Name a fruit.", messages=HI)
    assert talk.asked == HI
    assert TaskItem(id="t-2", task="t", prompt="Hi.", messages=HI[:1]).asked == "Hi."
    assert TaskItem(id="t-3", task="t", prompt="Name a fruit.").asked == "Name a fruit."


def test_the_multi_pass_and_cross_tokenizer_methods_continue_the_conversation_too(collab, tmp_path):
    from baco import Collaboration
    from baco.testing import make_tiny_cross_pair

    sampling = SamplingParams(max_new_tokens=4, seed=2)
    negative = collab.generate([HI, ABOUT_DRAGONS], sampling, router="negative:0.5", n=2)
    assert [(s.prompt, s.messages) for s in negative] == [("Name a fruit.", HI)] * 2 + [("Name a fruit.",
                                                                                          ABOUT_DRAGONS)] * 2
    cross = Collaboration.from_pretrained(*make_tiny_cross_pair(tmp_path), device="cpu")
    base_tokenizer = cross.pair.base.tokenizer
    fmt = PromptFormat(system_prompt="Answer in one word.", few_shot=(("I love dragons.", "Me too."),))
    request = cross.requests([ABOUT_DRAGONS], 1, sampling, 2)[0]
    assert request.base_ids == base_tokenizer(fmt.render_base("Name a fruit."))["input_ids"]
    (sample,) = cross.generate(ABOUT_DRAGONS, sampling, router="chared:0.5")
    assert sample.unit == "span" and sample.messages == ABOUT_DRAGONS


def test_a_sweep_plans_and_decodes_two_conversations_ending_in_the_same_turn_as_two_prompts(tiny_dirs, tmp_path):
    from baco.sweep import Engines, parse_config, run_cells
    from baco.sweep.store import SampleStore

    path = tmp_path / "talks.jsonl"
    rows = [{"messages": HI}, {"messages": ABOUT_DRAGONS}, {"messages": HI}, {"prompt": "Name a fruit."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = parse_config({"name": "talks", "n": 2, "seeds": [0], "tasks": [{"path": str(path), "name": "talks"}],
                           "sampling": {"max_new_tokens": 4}, "methods": {"p-punc": {"router": "p-punc",
                                                                                     "values": [0.5]}},
                           "metrics": {"diversity": ["distinct-2"], "quality": ["relevance"]}})
    with pytest.warns(UserWarning, match="skipped 1 item"):  # the second HI: the same conversation again
        run_cells(config, tmp_path / "run", Engines.load(*map(str, tiny_dirs), device="cpu"), progress=False)
    stored = SampleStore(tmp_path / "run" / "samples.jsonl").read()
    asked = [r.get("messages") for r in sorted(stored, key=lambda r: (r["prompt_index"], r["sample_index"]))]
    assert asked == [HI, HI, ABOUT_DRAGONS, ABOUT_DRAGONS, None, None]
    assert len({r["id"] for r in stored}) == 6


def test_a_prompts_file_takes_the_developer_role_as_the_library_and_the_server_do(tmp_path, collab):
    from baco.cli import read_prompts

    talk = [{"role": "developer", "content": "Answer in one word."}, *HI]
    path = tmp_path / "talks.jsonl"
    path.write_text(json.dumps({"messages": talk}) + "\n")
    assert read_prompts(path) == [talk]
    assert collab.requests(read_prompts(path), 1, GREEDY, 3)[0].messages == talk


def test_a_prompts_file_names_the_line_and_message_of_an_earlier_turn_that_is_not_unicode(tmp_path):
    from baco.cli import read_prompts
    from baco.errors import TaskError

    path = tmp_path / "talks.jsonl"
    bad = [{"role": "user", "content": "Hi \ud800"}, *HI[1:]]
    path.write_text(json.dumps({"prompt": "Name a fruit."}) + "\n" + json.dumps({"messages": bad}) + "\n")
    with pytest.raises(TaskError, match=r"talks\.jsonl:2: message 0 is not valid Unicode text \(a lone surrogate"):
        read_prompts(path)


def test_a_message_may_hold_openai_text_parts_joined_by_newlines_as_vllm_joins_them(collab, tmp_path):
    from baco.cli import read_prompts

    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi."}, {"type": "text", "text": "Still there?"}]},
             {"role": "assistant", "content": "Yes."},
             {"role": "user", "content": [{"type": "text", "text": "Name a fruit."}]}]
    joined = [{"role": "user", "content": "Hi.\nStill there?"}, {"role": "assistant", "content": "Yes."},
              {"role": "user", "content": "Name a fruit."}]
    sampling = SamplingParams(max_new_tokens=4, seed=1)
    assert collab.generate([parts], sampling)[0].token_ids == collab.generate([joined], sampling)[0].token_ids
    assert collab.generate([parts], sampling)[0].messages == joined
    path = tmp_path / "parts.jsonl"
    path.write_text(json.dumps({"messages": parts}) + "\n")
    assert read_prompts(path) == [joined]
    with pytest.raises(PromptError, match="prompt 0 has message 0 whose content is neither a string nor a list of "
                                          "text parts"):
        collab.generate([[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]])
