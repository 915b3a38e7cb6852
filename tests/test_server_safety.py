"""`baco serve`'s safe defaults: bearer auth, a full queue answers 429, schema-based fuzzing finds no 5xx."""

import os
import subprocess
import sys

import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from baco.cli import main
from baco.server import Limits, ServerConfig
from server_helpers import LiveServer, wait_for


def _free_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


FREE_PORT = ["--port", _free_port()]  # `baco serve` checks it can listen before loading (8000 may be taken here)

KEY = "sekrit-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = {"prompt": "Tell me a story about a dragon.", "max_tokens": 200, "temperature": 0, "router": "base"}


@pytest.fixture(scope="module")
def guarded(collab):
    limits = Limits(max_tokens=200, default_max_tokens=4, max_prompt_tokens=120, max_n=2, max_prompts=2)
    config = ServerConfig(api_key=KEY, max_batch=4, max_len=256, max_queue=0, max_engines=2, limits=limits)
    with LiveServer(collab, config) as server:
        yield server


def test_every_route_but_health_needs_the_key(guarded):
    assert requests.get(guarded.url + "/health").status_code == 200
    probe = requests.head(guarded.url + "/health")  # uptime checks and load balancers probe with HEAD
    assert probe.status_code == 200 and probe.content == b""
    schema = requests.get(guarded.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    ids = [op["operationId"] for methods in schema["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))  # client generators need one name per operation (HEAD /health is no other)
    for path in ("/v1/models", "/metrics", "/openapi.json", "/docs", "/nowhere"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):  # the last: no scheme
            refused = requests.get(guarded.url + path, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["code"] == "invalid_api_key"
        assert requests.get(guarded.url + path, headers=AUTH).status_code == (404 if path == "/nowhere" else 200)


def test_the_openai_client_with_a_wrong_and_the_right_key(guarded):
    ask = dict(model="baco", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=4)
    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0)  # (it refuses to send none)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**ask)
    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(**ask).choices[0].finish_reason in ("stop", "length")


def test_a_full_server_answers_429_and_accepts_again_once_rows_leave(guarded):
    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0)
    ask = dict(model="baco", messages=[{"role": "user", "content": LONG["prompt"]}], max_tokens=LONG["max_tokens"],
               temperature=0, extra_body={"router": LONG["router"]})
    streams = [client.chat.completions.create(n=2, stream=True, **ask) for _ in range(2)]  # 4 rows: all slots
    with pytest.raises(openai.RateLimitError) as full:
        client.chat.completions.create(**ask)
    assert full.value.code == "queue_full" and full.value.response.headers["retry-after"] == "1"
    for stream in streams:
        stream.close()
    assert wait_for(lambda: guarded.worker.outstanding == 0)
    assert client.chat.completions.create(**{**ask, "max_tokens": 4}).choices


def test_the_openapi_schema_fuzzed_gives_no_server_error(guarded):
    """Schemathesis draws valid and invalid requests from the served schema: no 5xx, and every answer
    (status, content type, body) is one the schema declares; invalid requests are refused with a 4xx."""
    schema = schemathesis.openapi.from_url(guarded.url + "/openapi.json", headers=AUTH)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"}
    for operation in operations:
        modes = list(schemathesis.GenerationMode) if operation.method.upper() == "POST" else [  # GETs take nothing
            schemathesis.GenerationMode.POSITIVE]
        for mode in modes:
            @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def fuzz(case):
                case.call_and_validate(headers=AUTH, checks=checks, timeout=60)

            fuzz()


def _raw(body: str) -> bytes:
    """A JSON body as bytes, as a client sends it: `\\ud800` stays an escape (no encoder would write the char)."""
    return body.encode("ascii")


USER = '{"role": "user", "content": "hi"}'


@pytest.mark.parametrize("path, body, words", [
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "hi \\ud800"}}], "max_tokens": 2}}',
     "the last user message is not valid Unicode text (a lone surrogate U+D800 at character 4)"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "\\ud800"}}], "stream": true}}',
     "the last user message is not valid Unicode text"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "system", "content": "be \\udc80"}}, {USER}]}}',
     "message 0 (system) is not valid Unicode text (byte 0x80 at character 4 is not UTF-8"),
    ("/v1/chat/completions", f'{{"messages": [{USER}, {{"role": "assistant", "content": "\\udfff"}}, {USER}]}}',
     "message 1 (assistant) is not valid Unicode text (a lone surrogate U+DFFF at character 1)"),
    ("/v1/completions", '{"prompt": ["fine", "hi \\ud800"], "max_tokens": 2}', "prompt 1 is not valid Unicode text"),
    ("/v1/completions", '{"prompt": "\\ud800", "stream": true}', "the prompt is not valid Unicode text"),
])
def test_text_that_is_not_valid_unicode_is_refused_400_in_openais_error_shape(guarded, path, body, words):
    """A lone surrogate is valid JSON but no text a tokenizer encodes: refused before any row runs, wherever the
    request carries text to the models (a prompt, a system message, an earlier turn)."""
    body = body.replace("{", '{"model": "baco", ', 1)
    answer = requests.post(guarded.url + path, data=_raw(body), headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]
    assert error["param"] == ("messages" if "chat" in path else "prompt")


# ---- the command line -----------------------------------------------------------------------------------------
def test_baco_serve_takes_the_key_from_the_environment_and_checks_flags_before_loading(tiny_dirs, monkeypatch,
                                                                                       capsys):
    import baco.server

    served = {}
    monkeypatch.setattr(baco.server, "run", lambda collab, config, **where: served.update(config=config, **where))
    monkeypatch.setenv("BACO_API_KEY", "from-env")
    base, aligned = map(str, tiny_dirs)
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--router", "nudge:0.30", "--max-len", "128"]) == 0
    config = served["config"]
    assert config.api_key == "from-env" and config.router == "nudge:0.3" and served["host"] == "127.0.0.1"
    assert config.limits.max_tokens == config.limits.max_prompt_tokens == 127
    assert config.prefill_tokens == 8192  # vLLM's chunked-prefill default
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--prefill-tokens", "64"]) == 0
    assert served["config"].prefill_tokens == 64
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--host", "0.0.0.0", "--api-key", "k"]) == 0
    monkeypatch.delenv("BACO_API_KEY")
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--host", "0.0.0.0"]) == 0
    assert "without an API key" in capsys.readouterr().err
    for bad in (["--max-batch", "0"], ["--threads", "0"], ["--router", "negative:0.5"], ["--router", "chared:0.5"], ["--router", "nope"],
                ["--max-n", "64"], ["--base", base], ["--min-p", "2"], ["--prefill-tokens", "0"],
                ["--model-name", ""], ["--model-name", " "],  # (an unset shell variable: no client could name it)
                ["--max-len", "128", "--max-tokens", "128"], ["--max-prompt-tokens", "2000"]):  # (no slot holds them)
        assert main(["serve", *bad]) == 2, bad  # refused before any model loads


def test_baco_serve_refuses_a_cross_tokenizer_pair_before_its_weights_load_naming_what_runs_it(tmp_path, monkeypatch,
                                                                                            capsys):
    import baco.api
    from baco.testing import make_tiny_cross_pair

    base, aligned = map(str, make_tiny_cross_pair(tmp_path))
    monkeypatch.setattr(baco.api.HFCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded the weights"))
    capsys.readouterr()  # (making the pair writes progress bars)
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned]) == 2
    err = capsys.readouterr().err
    assert err.startswith("baco: error: baco serve steps both models through one shared vocabulary") and err.count("\n") == 1
    assert "`baco generate`" in err and "chared:W" in err and err.count("cross-tokenizer method") == 1


def test_an_app_or_engine_check_on_a_cross_tokenizer_pair_is_refused_not_an_attribute_error(tmp_path):
    """The library's doors to the lockstep engine say why a cross pair cannot go through them."""
    from baco import Collaboration
    from baco.decode.engine import check_memory, fit_slots
    from baco.errors import TokenizerMismatchError
    from baco.server import create_app
    from baco.testing import make_tiny_cross_pair

    collab = Collaboration.from_pretrained(*make_tiny_cross_pair(tmp_path), device="cpu")
    for door in (lambda: create_app(collab), lambda: check_memory(collab.pair, 4, 64),
                 lambda: fit_slots(collab.pair, 64)):
        with pytest.raises(TokenizerMismatchError, match="it cannot serve this pair.*`baco generate`"):
            door()


def test_baco_serve_says_at_startup_when_its_caches_cannot_fit(tiny_dirs, monkeypatch, capsys):
    """Engines are made per router at the first request; their caches are reckoned at startup: one engine
    that cannot fit is an error before serving, several that cannot fit at once a warning."""
    import baco.server
    from baco import Collaboration
    from baco.decode.engine import cache_bytes, free_bytes

    served = []
    monkeypatch.setattr(baco.server, "run", lambda collab, config, **where: served.append(config))
    base, aligned = map(str, tiny_dirs)
    columns = 4096
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--max-batch", str(2**30), "--max-len", str(columns)]) == 2
    assert "lower --max-batch or --max-len" in capsys.readouterr().err and not served
    pair = Collaboration.from_pretrained(base, aligned).pair
    slots = int(free_bytes(pair.device) / 2.5 / (cache_bytes(pair, 1024, columns) / 1024))  # one fits, four do not
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--max-batch", str(slots), "--max-len", str(columns),
                 "--max-routers", "4"]) == 0
    warning = capsys.readouterr().err
    assert served and "warning: the KV caches for 4 engines" in warning and "--max-routers 4" in warning


def test_baco_serve_refuses_an_address_it_cannot_listen_on_before_loading(tiny_dirs, monkeypatch, capsys):
    import socket

    import baco.api

    monkeypatch.setattr(baco.api.Collaboration, "from_pretrained", lambda *a, **k: pytest.fail("loaded the models"))
    base, aligned = map(str, tiny_dirs)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--base", base, "--aligned", aligned, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
    assert main(["serve", "--base", base, "--aligned", aligned, "--host", "256.1.1.1"]) == 2
    assert "cannot listen on 256.1.1.1:8000" in capsys.readouterr().err


def test_baco_serve_sizes_its_slots_from_memory_with_max_batch_auto(tiny_dirs, monkeypatch, capsys):
    """--max-batch auto: every engine the server may keep (--max-routers) gets the same share of --memory-fraction
    of the device's memory, for prompts as long as --max-prompt-tokens."""
    import psutil

    import baco.server
    from baco import Collaboration
    from baco.decode.engine import fit_slots, slot_bytes

    base, aligned = map(str, tiny_dirs)
    columns = 2**17  # long slots: with a fraction a little above what is in use, about 40 fit, fewer than the cap
    per_slot = slot_bytes(Collaboration.from_pretrained(base, aligned).pair, columns, 500)
    memory = psutil.virtual_memory()
    fraction = min(1.0, (memory.total - memory.available + 2 * 40 * per_slot) / memory.total)
    served = []
    monkeypatch.setattr(baco.server, "run", lambda collab, config, **where: served.append(
        (config, fit_slots(collab.pair, columns, prompt_columns=500, fraction=fraction, engines=2))))
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--max-batch", "auto",
                 "--gpu-memory-utilization", repr(fraction), "--max-len", str(columns), "--max-prompt-tokens", "500", "--max-routers", "2"]) == 0
    config, fits_now = served[0]
    assert 1 <= config.max_batch < 256 and abs(config.max_batch - fits_now) <= 1  # memory in use moves a little
    assert f"--max-batch auto: {config.max_batch} slots of {columns} tokens per engine" in capsys.readouterr().err
    assert main(["serve", *FREE_PORT, "--base", base, "--aligned", aligned, "--max-batch", "auto", "--memory-fraction", "1e-9"]) == 2
    assert "not one slot of 1024 tokens fits for each of 4 engines" in capsys.readouterr().err


@pytest.mark.slow
def test_baco_serve_with_no_model_arguments_serves_the_embedded_pair(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "baco.cli", "serve", "--port", str(port), "--log-level", "warning"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(url + "/health", timeout=2).ok
            except requests.ConnectionError:
                return server.poll() is not None

        assert wait_for(up, timeout=600) and server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        answer = client.chat.completions.create(model="baco", messages=[{"role": "user", "content": "Name a fruit."}],
                                                max_tokens=24, seed=0)
        assert answer.choices[0].message.content.strip()
        assert "".join(p["text"] for p in answer.choices[0].model_extra["provenance"]) == \
            answer.choices[0].message.content
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
