"""`baco eval` reads other tools' outputs: lm-evaluation-harness `--log_samples` files and OpenAI / vLLM batch
files (input + output joined on custom_id). The fixtures are small rows written as those tools write them."""

import json

import pytest

from baco.cli import main
from baco.evaluate.io import SamplesError, group_records, read_records

GEN_KWARGS = {"until": ["Question:", "</s>"], "do_sample": True, "temperature": 1.0}


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lm_eval_row(doc_id, context, resps, *, filtered, filter_name="none", arguments=None):
    """A row as lm-eval 0.4.3+ writes it for a generate_until task (`arguments` as gen_args_N / arg_M)."""
    return {"doc_id": doc_id, "doc": {"question": context}, "target": "42",
            "arguments": arguments or {"gen_args_0": {"arg_0": context, "arg_1": GEN_KWARGS}},
            "resps": resps, "filtered_resps": filtered, "filter": filter_name, "metrics": ["exact_match"],
            "doc_hash": "d0", "prompt_hash": "p0", "target_hash": "t0", "exact_match": 0.0}


# --- lm-evaluation-harness ----------------------------------------------------------------------------------------

def test_lm_eval_generations_are_the_raw_resps_of_each_document_with_the_task_from_the_file_name(tmp_path):
    """With `repeats: 3` each document's request holds three generations: three responses of its context. The
    second filter's rows repeat the same raw generations and are not counted again."""
    path = write_rows(tmp_path / "org__model" / "samples_gsm8k_cot_2025-01-31T10-17-01.123456.jsonl", [
        lm_eval_row(0, "Q: 2+2?\nA:", [["It is 4.", "Four, so 4.", "2+2=4"]],
                    filtered=[["4", "4", "4"]], filter_name="strict-match"),
        lm_eval_row(1, "Q: 3+3?\nA:", [["6", "Six.", "3 and 3 make 6"]],
                    filtered=[["6", "6", "6"]], filter_name="strict-match"),
        lm_eval_row(0, "Q: 2+2?\nA:", [["It is 4.", "Four, so 4.", "2+2=4"]],
                    filtered=["4"], filter_name="flexible-extract"),
        lm_eval_row(1, "Q: 3+3?\nA:", [["6", "Six.", "3 and 3 make 6"]],
                    filtered=["6"], filter_name="flexible-extract")])
    records, warnings = read_records([path])
    assert warnings == []
    groups = group_records(records)
    assert {key: [r.response for r in rows] for key, rows in groups.items()} == {
        ("gsm8k_cot", "org__model", None, "Q: 2+2?\nA:"): ["It is 4.", "Four, so 4.", "2+2=4"],
        ("gsm8k_cot", "org__model", None, "Q: 3+3?\nA:"): ["6", "Six.", "3 and 3 make 6"]}


def test_lm_eval_rows_of_older_versions_list_their_arguments(tmp_path):
    """Before lm-eval 0.4.3, `arguments` was [[context, {generation settings}]] (a list per request)."""
    path = write_rows(tmp_path / "old.jsonl", [
        lm_eval_row(0, "unused", [["a red fox", "a blue jay"]], filtered=["a red fox"],
                    arguments=[["Name an animal.", GEN_KWARGS]])])
    records, warnings = read_records([path])
    assert [(r.task, r.method, r.prompt, r.response) for r in records] == [
        ("default", "old", "Name an animal.", "a red fox"), ("default", "old", "Name an animal.", "a blue jay")]
    assert warnings == []


def test_an_api_models_chat_context_is_its_last_user_turn(tmp_path):
    """lm-eval's API models keep a chat as JSON (its JsonChatStr, written as a one-item list)."""
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 1+1?"},
            {"role": "assistant", "content": "2"}, {"role": "user", "content": "Q: 2+2?"}]
    path = write_rows(tmp_path / "api.jsonl", [
        lm_eval_row(0, "unused", [["4"]], filtered=["4"],
                    arguments={"gen_args_0": {"arg_0": [json.dumps(chat)], "arg_1": GEN_KWARGS}})])
    records, _ = read_records([path])
    assert [(r.prompt, r.response) for r in records] == [("Q: 2+2?", "4")]


def test_lm_eval_loglikelihood_rows_are_skipped_with_one_warning_for_the_file(tmp_path):
    """Multiple-choice rows score continuations ([logprob, is_greedy] per choice, strings since 0.4.3, numbers
    before); perplexity rows have one argument. Neither generated text: one warning names the file."""
    choice = {"doc": {}, "target": "0", "filtered_resps": [], "filter": "none", "metrics": ["acc"]}
    rows = [{**choice, "doc_id": 0, "arguments": {"gen_args_0": {"arg_0": "Q: sky?\nA:", "arg_1": " blue"},
                                                  "gen_args_1": {"arg_0": "Q: sky?\nA:", "arg_1": " green"}},
             "resps": [[["-1.5", "True"]], [["-7.25", "False"]]]},
            {**choice, "doc_id": 1, "arguments": [["Q: grass?\nA:", " green"], ["Q: grass?\nA:", " red"]],
             "resps": [[[-0.5, True]], [[-9.0, False]]]},
            {**choice, "doc_id": 2, "arguments": {"gen_args_0": {"arg_0": "A whole wiki page."}},
             "resps": [["-812.5"]]}]
    mixed = write_rows(tmp_path / "arc_and_gen.jsonl", rows + [lm_eval_row(3, "Say hi.", [["hi"]], filtered=["hi"])])
    records, warnings = read_records([mixed])
    assert [(r.prompt, r.response) for r in records] == [("Say hi.", "hi")]
    assert warnings == [f"{mixed}: 3 rows skipped (first at {mixed}:1): lm-eval loglikelihood rows hold no generated "
                        f"text (multiple-choice or perplexity tasks; only generate_until tasks can be evaluated)"]
    only = write_rows(tmp_path / "samples_arc_easy_2025-01-31T10-17-01.jsonl", rows)
    with pytest.raises(SamplesError, match="lm-eval loglikelihood rows hold no generated text"):
        read_records([only])


def test_bad_lm_eval_rows_are_named_and_skipped_and_a_document_stored_twice_counts_once(tmp_path):
    path = write_rows(tmp_path / "bad.jsonl", [
        lm_eval_row(0, "p", [["x y"]], filtered=["x y"]),
        lm_eval_row(1, "q", [["z"]], filtered=["z"], arguments={"oops": 1}),
        lm_eval_row(2, "r", [], filtered=[]),
        lm_eval_row(0, "p", [["x y"]], filtered=["x y"])])  # the same filter again: appended twice
    records, warnings = read_records([path])
    assert [r.response for r in records] == ["x y"]
    assert warnings == [
        f'{path}:2: an lm-eval row\'s "arguments" is neither {{"gen_args_0": {{"arg_0": ...}}}} nor [[context, ...]]; '
        f'line skipped',
        f'{path}:3: an lm-eval row\'s "resps" is not a list of one list per request (1); line skipped',
        f"{path}:4: lm-eval document 0 was already read at {path}:1 (stored twice); line skipped"]


def test_the_tasks_of_one_lm_eval_run_are_one_method_named_after_its_model_folder(tmp_path):
    """lm-eval writes `<output_path>/<model>/samples_<task>_<time>.jsonl`: the files of one folder are one
    method (each file its own task); --method-from file names each file apart; two runs of one task in one
    folder are pooled with a warning."""
    run = tmp_path / "out" / "org__model-1.5B"
    a = write_rows(run / "samples_taskA_2025-01-31T10-17-01.5.jsonl", [lm_eval_row(0, "p", [["a b"]], filtered=["x"])])
    b = write_rows(run / "samples_taskB_2025-01-31T10-17-01.5.jsonl", [lm_eval_row(0, "q", [["c d"]], filtered=["x"])])
    records, warnings = read_records([a, b])
    assert {(r.task, r.method) for r in records} == {("taskA", "org__model-1.5B"), ("taskB", "org__model-1.5B")}
    assert warnings == []
    records, _ = read_records([a, b], method_from="file")
    assert {(r.task, r.method) for r in records} == {("taskA", "samples_taskA_2025-01-31T10-17-01.5"),
                                                     ("taskB", "samples_taskB_2025-01-31T10-17-01.5")}
    again = write_rows(run / "samples_taskA_2025-02-01T08-00-00.jsonl",
                       [lm_eval_row(0, "p", [["e f"]], filtered=["x"])])
    records, warnings = read_records([a, again])
    assert [r.response for r in records if r.method == "org__model-1.5B"] == ["a b", "e f"]
    assert warnings == [f"lm-eval files {a}, {again} are runs of task 'taskA' in one folder ({run}): they are pooled "
                        f"as one method, named after the folder; pass --method-from file to evaluate each file as its "
                        f"own method"]


# --- OpenAI / vLLM batch files -----------------------------------------------------------------------------------

def chat_request(custom_id, question, *, n=2, temperature=1.0, model="gpt-4o-mini"):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "n": n, "temperature": temperature,
                     "messages": [{"role": "system", "content": "You are helpful."},
                                  {"role": "user", "content": question}]}}


def chat_answer(custom_id, *replies, model="gpt-4o-mini-2024-07-18"):
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": f"req_{custom_id}",
                         "body": {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                                  "choices": [{"index": i, "message": {"role": "assistant", "content": reply},
                                               "finish_reason": "stop"} for i, reply in enumerate(replies)]}},
            "error": None}


def test_a_batch_output_is_joined_with_its_input_and_each_choice_is_a_response(tmp_path):
    requests = write_rows(tmp_path / "batch_input.jsonl", [chat_request("r1", "Name a fruit."),
                                                           chat_request("r2", "Name a color.")])
    answers = write_rows(tmp_path / "batch_output.jsonl", [chat_answer("r2", "Red.", "Teal."),  # any order
                                                           chat_answer("r1", "Fig.", "Kiwi.")])
    records, warnings = read_records([requests, answers])
    assert warnings == []
    assert {(*key[:3], rows[0].prompt): [r.response for r in rows] for key, rows in group_records(records).items()} == {
        ("default", "gpt-4o-mini-2024-07-18", None, "Name a color."): ["Red.", "Teal."],
        ("default", "gpt-4o-mini-2024-07-18", None, "Name a fruit."): ["Fig.", "Kiwi."]}
    assert records[0].messages[0] == {"role": "system", "content": "You are helpful."}  # the conversation asked
    assert {r.method for r in read_records([requests, answers], method_from="file")[0]} == {"batch_output"}


def test_batch_chats_that_end_in_the_same_user_turn_after_other_turns_are_two_prompts(tmp_path):
    other = chat_request("r2", "Name a fruit.")
    other["body"]["messages"][0]["content"] = "Answer in French."
    requests = write_rows(tmp_path / "in.jsonl", [chat_request("r1", "Name a fruit."), other])
    answers = write_rows(tmp_path / "out.jsonl", [chat_answer("r1", "Fig.", "Kiwi."), chat_answer("r2", "Pomme.")])
    records, _ = read_records([requests, answers])
    assert sorted(len(rows) for rows in group_records(records).values()) == [1, 2]


def test_a_text_completion_batch_reads_the_prompt_string_and_choice_texts(tmp_path):
    """vLLM's and OpenAI's /v1/completions: body "prompt", choices' "text" (ordered by their index)."""
    requests = write_rows(tmp_path / "in.jsonl", [{"custom_id": "c1", "method": "POST", "url": "/v1/completions",
                                                   "body": {"model": "Qwen/Qwen2.5-0.5B", "prompt": "Once upon",
                                                            "n": 2, "max_tokens": 8}}])
    answers = write_rows(tmp_path / "out.jsonl", [{
        "id": "vllm-1", "custom_id": "c1", "error": None,
        "response": {"status_code": 200, "request_id": "vllm-batch-1",
                     "body": {"object": "text_completion", "model": "Qwen/Qwen2.5-0.5B",
                              "choices": [{"index": 1, "text": " a hill"}, {"index": 0, "text": " a time"}]}}}])
    records, _ = read_records([requests, answers])
    assert [(r.method, r.prompt, r.response) for r in records] == [("Qwen/Qwen2.5-0.5B", "Once upon", " a time"),
                                                                   ("Qwen/Qwen2.5-0.5B", "Once upon", " a hill")]


def test_failed_batch_rows_and_unknown_custom_ids_are_named_and_skipped(tmp_path):
    requests = write_rows(tmp_path / "in.jsonl", [chat_request(f"r{i}", f"Question {i}?") for i in range(1, 5)])
    answers = write_rows(tmp_path / "out.jsonl", [
        chat_answer("r1", "Yes."),
        {"id": "batch_req_2", "custom_id": "r2", "response": None,  # OpenAI's error file
         "error": {"code": "rate_limit_exceeded", "message": "Rate limit reached"}},
        {"id": "vllm-3", "custom_id": "r3", "response": {"status_code": 400, "request_id": "vllm-batch-3",
                                                         "body": None},
         "error": "This model's maximum context length is 2048 tokens"},
        {"id": "batch_req_4", "custom_id": "r4", "error": None,
         "response": {"status_code": 500, "request_id": "req_4", "body": {"error": {"message": "server error"}}}},
        chat_answer("r9", "Who asked?")])
    records, warnings = read_records([requests, answers])
    assert [(r.prompt, r.response) for r in records] == [("Question 1?", "Yes.")]
    assert warnings == [f"{answers}:2: batch request 'r2' failed (no response: Rate limit reached); line skipped",
                        f"{answers}:3: batch request 'r3' failed (status 400: This model's maximum context length is "
                        f"2048 tokens); line skipped",
                        f"{answers}:4: batch request 'r4' failed (status 500: server error); line skipped",
                        f"{answers}:5: custom_id 'r9' is in no batch input file given before this one; line skipped"]


def test_a_batch_output_without_its_input_file_is_an_error_that_says_to_pass_it(tmp_path, capsys):
    requests = write_rows(tmp_path / "in.jsonl", [chat_request("r1", "Name a fruit.")])
    answers = write_rows(tmp_path / "out.jsonl", [chat_answer("r1", "Fig.")])
    with pytest.raises(SamplesError, match=r"out.jsonl:1: an OpenAI batch output row \(custom_id 'r1'\) does not "
                                           r"hold its prompt, which is in the batch input file: pass that file too"):
        read_records([answers])
    with pytest.raises(SamplesError, match="pass that file too, before this one"):  # given after its output
        read_records([answers, requests])
    assert main(["eval", str(answers), "--metrics", "distinct-1", "--quiet"]) == 2
    assert "pass that file too" in capsys.readouterr().err
    with pytest.raises(SamplesError, match=r"an OpenAI batch input file \(1 request\) that no output file given after "
                                           "it answers"):
        read_records([requests])


def test_each_output_joins_the_input_given_last_before_it(tmp_path):
    """Two batches whose custom_ids are the same (request-1 ...): IN_A OUT_A IN_B OUT_B; one input may serve
    the outputs of several models given after it."""
    in_a = write_rows(tmp_path / "in_a.jsonl", [chat_request("request-1", "Name a fruit.")])
    in_b = write_rows(tmp_path / "in_b.jsonl", [chat_request("request-1", "Name a color.")])
    out_a = write_rows(tmp_path / "out_a.jsonl", [chat_answer("request-1", "Fig.", model="m1")])
    out_b = write_rows(tmp_path / "out_b.jsonl", [chat_answer("request-1", "Red.", model="m1")])
    out_c = write_rows(tmp_path / "out_c.jsonl", [chat_answer("request-1", "Blue.", model="m2")])
    records, warnings = read_records([in_a, out_a, in_b, out_b, out_c])
    assert [(r.method, r.prompt, r.response) for r in records] == [
        ("m1", "Name a fruit.", "Fig."), ("m1", "Name a color.", "Red."), ("m2", "Name a color.", "Blue.")]
    assert warnings == []


def test_one_model_answering_requests_of_different_settings_is_pooled_with_a_warning(tmp_path):
    cool = write_rows(tmp_path / "cool_in.jsonl", [chat_request("r1", "Name a fruit.", temperature=0.5)])
    hot = write_rows(tmp_path / "hot_in.jsonl", [chat_request("r1", "Name a fruit.", temperature=1.5)])
    cool_out = write_rows(tmp_path / "cool_out.jsonl", [chat_answer("r1", "Fig.", "Fig.")])
    hot_out = write_rows(tmp_path / "hot_out.jsonl", [chat_answer("r1", "Kiwi.", "Plum.")])
    records, warnings = read_records([cool, cool_out, hot, hot_out])
    assert len({r.method for r in records}) == 1
    assert warnings == [f"method 'gpt-4o-mini-2024-07-18' holds OpenAI batch responses to requests with 2 different "
                        f"settings (first at {cool}:1, {hot}:1): they are pooled as one method; pass --method-from "
                        f"file to evaluate each file as its own method"]
    records, warnings = read_records([cool, cool_out, hot, hot_out], method_from="file")
    assert {r.method for r in records} == {"cool_out", "hot_out"} and warnings == []


def test_batch_requests_without_a_text_prompt_are_named_when_their_output_is_read(tmp_path):
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
    parts = {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "briefly."}]}
    chat, text = {"method": "POST", "url": "/v1/chat/completions"}, {"method": "POST", "url": "/v1/completions"}
    requests = write_rows(tmp_path / "in.jsonl", [
        {"custom_id": "img", **chat, "body": {"model": "m", "messages": [image]}},
        {"custom_id": "two", **text, "body": {"model": "m", "prompt": ["a", "b"]}},
        {"custom_id": "txt", **chat, "body": {"model": "m", "messages": [parts]}},
        {"custom_id": "txt", **chat, "body": {"model": "m", "messages": []}}])
    answers = write_rows(tmp_path / "out.jsonl", [chat_answer("img", "A cat."), chat_answer("two", "x"),
                                                  chat_answer("txt", "A dog.")])
    records, warnings = read_records([requests, answers])
    assert [(r.prompt, r.response) for r in records] == [("Describe\nbriefly.", "A dog.")]
    assert warnings == [f"{requests}:4: batch request 'txt' was already given at {requests}:3; line skipped",
                        f"{answers}:1: batch request 'img' (at {requests}:1): the last user turn's content is not "
                        f"text; line skipped",
                        f"{answers}:2: batch request 'two' (at {requests}:2): its body has no \"messages\" chat or "
                        f"one \"prompt\" string (several prompts, token ids, or not a completion request); "
                        f"line skipped"]


def test_baco_eval_compares_lm_eval_and_batch_outputs_with_baco_samples(tmp_path):
    """End to end: three tools' files in one table, one method each, on the same task."""
    lm = write_rows(tmp_path / "lm" / "my-model" / "samples_fruit_2025-01-31T10-17-01.jsonl",
                    [lm_eval_row(0, "Name a fruit.", [["fig", "fig", "fig"]], filtered=["fig"])])
    requests = write_rows(tmp_path / "in.jsonl", [chat_request("r1", "Name a fruit.", n=3)])
    answers = write_rows(tmp_path / "out.jsonl", [chat_answer("r1", "kiwi", "plum", "lime", model="gpt")])
    ours = write_rows(tmp_path / "baco.jsonl", [{"prompt": "Name a fruit.", "response": r, "task": "fruit"}
                                                for r in ("pear", "pear", "date")])
    out = tmp_path / "m.json"
    assert main(["eval", str(lm), str(requests), str(answers), str(ours), "--metrics", "distinct-1",
                 "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert {task: {m: v["distinct-1"] for m, v in methods.items()} for task, methods in data["summary"].items()} == {
        "fruit": {"my-model": 1 / 3, "baco": 2 / 3}, "default": {"gpt": 1.0}}
