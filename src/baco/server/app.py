"""The HTTP door: FastAPI routes over the stepping thread, bearer auth, limits and OpenAI-shaped errors.

    GET  /health                 (no auth)      GET /metrics      (Prometheus text)
    GET  /v1/models, /v1/models/{id}             POST /v1/completions, /v1/chat/completions (stream: SSE)
    POST /tokenize, /detokenize                  (vLLM's)
"""

import asyncio
import hmac
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import baco
from baco.defaults import PREFILL_TOKENS
from baco.errors import BacoError, PromptTooLongError
from baco.prompts import encode_request, unicode_problem
from baco.server import schemas
from baco.server.metrics import Metrics
from baco.server.requests import about, conversation, plan
from baco.server.responses import Shaper
from baco.server.schemas import Limits
from baco.server.shutdown import MESSAGE, Drain
from baco.server.worker import Job, QueueFull, Worker

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize",
          "/openapi.json", "/docs")


@dataclass
class ServerConfig:
    """How `baco serve` runs; every bound is checked here, once."""

    model_id: str = "baco"
    router: str = "p-punc:0.5"
    api_key: str | None = None
    min_p: float = 0.05
    max_batch: int = 32
    max_len: int = 1024
    max_queue: int = 256
    max_engines: int = 4
    prefill_tokens: int = PREFILL_TOKENS
    limits: Limits = field(default_factory=lambda: Limits(max_tokens=1023, default_max_tokens=256,
                                                          max_prompt_tokens=1023, max_n=16, max_prompts=16))

    def __post_init__(self):
        for name in ("max_batch", "max_len", "max_queue", "max_engines", "prefill_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "max_queue" else 1):
                raise BacoError(f"{name} must be a positive integer, got {value!r}")
        if self.max_len < 2:
            raise BacoError(f"max_len must be at least 2, got {self.max_len}")
        rows = self.limits.max_n * self.limits.max_prompts
        if rows > self.max_batch + self.max_queue:
            raise BacoError(f"one request may ask for {rows} rows (max n x max prompts), more than the "
                            f"{self.max_batch + self.max_queue} that max_batch + max_queue let wait")
        if self.api_key is not None and not self.api_key.strip():
            raise BacoError("the API key is empty")
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise BacoError(f"the model id (--model-name) must be a non-blank name, got {self.model_id!r}")


def error_body(message: str, kind: str = "invalid_request_error", *, param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object (a response's body, or a stream's last event)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error(status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
          code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    return JSONResponse(error_body(message, kind, param=param, code=code), status_code=status, headers=headers)


def is_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON: application/json or application/*+json (without
    the header it reads none: FastAPI's strict_content_type)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
              type(None): "null"}


def body_problem(first: dict, content_type: str) -> tuple[str, str]:
    """(message, code) for a body that is not a request at all: pydantic's words ("Field required", "Input should
    be a valid dictionary") name no field and no fix. As in vLLM, a body not sent as JSON is refused, not guessed
    at (curl -d sends a form)."""
    if first.get("type") == "missing":
        return "the request body is empty: send a JSON object (header Content-Type: application/json)", "empty_body"
    if not is_json(content_type):
        media = content_type.split(";", 1)[0].strip()
        sent = f"as {media}" if media else "without a Content-Type header"
        return (f"the body was sent {sent}: send it as a JSON object with the header Content-Type: application/json",
                "unsupported_media_type")
    kind = JSON_KINDS.get(type(first.get("input")), "not an object")
    return f"the body must be a JSON object, got {kind}", first.get("type", "invalid_body")


def field_problem(first: dict) -> str:
    """Pydantic's message for a field; for a one-or-a-list field (`schemas.one_or_many`) a value of neither type
    says so, and a list's bound is said plainly (pydantic says "after validation")."""
    ctx, loc = first.get("ctx") or {}, tuple(first.get("loc", ()))
    if loc and loc[-1] == schemas.ONE and first.get("type", "").endswith("_type"):  # neither branch's type
        return "Input should be a string or a list"
    if first.get("type") in ("too_long", "too_short") and ctx.get("field_type") == "List":
        longest = first["type"] == "too_long"
        bound, limit = ("at most", ctx["max_length"]) if longest else ("at least", ctx["min_length"])
        return f"a list of {bound} {limit} item{'' if limit == 1 else 's'} is accepted, got {ctx['actual_length']}"
    return first["msg"]


def another_model(first: dict) -> str | None:
    """The model id a request named when it is a string but not the served model's id (a validation error of the
    `model` field), else None: OpenAI's API and vLLM answer such a request 404 model_not_found, not 400."""
    if tuple(first.get("loc", ())) == ("body", "model") and first.get("type") == "literal_error":
        named = first.get("input")
        return named if isinstance(named, str) else None
    return None


def model_not_found(named: str, served: str) -> JSONResponse:
    return error(404, f"the model {named!r} does not exist: this server serves {served!r}", param="model",
                 code="model_not_found")


def shutdown_body(message: str = MESSAGE) -> dict:
    """The error of a request the server refuses or cuts off because it is shutting down (HTTP 503)."""
    return error_body(message, "server_error", code="server_shutting_down")


def shutting_down() -> JSONResponse:
    return JSONResponse(shutdown_body(), status_code=503)


class Guard:
    """Outermost ASGI layer: counts requests, checks the bearer token (all routes but /health) and the body size,
    and refuses new requests once the server is shutting down (`drain`, which `shutdown.Server` starts)."""

    def __init__(self, app, *, api_key: str | None, max_body: int, metrics: Metrics, drain: Drain):
        self.app, self.api_key, self.max_body, self.metrics, self.drain = app, api_key, max_body, metrics, drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = {}

        async def counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is None:
                receive, refusal = await self._buffer(scope, receive)
            if refusal is not None:
                return await refusal(scope, receive, counted)
            await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(route=route, status=str(status.get("code", 499))).inc()

    def _refuse(self, scope):
        refusal = self._unauthorized(scope)
        return shutting_down() if refusal is None and self.drain.closing else refusal

    def _unauthorized(self, scope):
        if self.api_key is None or scope["path"] == "/health":
            return None
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return None
        message = "no API key given (header Authorization: Bearer KEY)" if not given else "invalid API key"
        return error(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _buffer(self, scope, receive):
        """Read the whole body (at most max_body bytes) before the app sees it; 413 beyond."""
        too_large = error(413, f"the request body is larger than {self.max_body} bytes", code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return receive, too_large if length.isdigit() else error(400, "bad Content-Length header")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive, None  # the client left; the app will see the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return receive, too_large
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then the client's disconnect, when it comes

        return replay, None


class JobStream:
    """The asyncio side of a job: the stepping thread's messages arrive on a queue (and a shutdown's, `shut`)."""

    def __init__(self, choices: int):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.open = choices  # choices not finished yet

    def deliver(self, messages: list) -> None:  # called from the stepping thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, messages)

    def shut(self, message: str) -> None:  # called on the event loop: the request ends with this error
        self.queue.put_nowait([("shutdown", None, message)])

    async def messages(self):
        while self.open:
            for message in await self.queue.get():
                if message[0] == "finish":
                    self.open -= 1
                yield message


class EventStream(StreamingResponse):
    """Server-sent events; `answered()` runs once the response is over, however it ended (the stream finished,
    the client left, the task was cancelled), even where the body never started."""

    def __init__(self, events, answered):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.answered = answered

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.answered()


class Failure(Exception):
    """A request ends with an error instead of its text: its engine failed (a bug, not the request's fault: 500),
    the device has no room for it now (503, retry later), or the server is shutting down (503)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.status = 503 if kind in ("shutdown", "capacity") else 500
        self.headers = {"Retry-After": "1"} if kind == "capacity" else None
        if kind == "shutdown":
            self.body = shutdown_body(message)
        elif kind == "capacity":
            self.body = error_body(f"no room for this request now: {message}", "server_error", code="out_of_memory")
        else:
            self.body = error_body(f"generation failed: {message}", "server_error")


def create_app(collab, config: ServerConfig | None = None) -> "Guard":
    """The ASGI app serving `collab` (a Collaboration): the FastAPI app (`.app`, whose `state.worker` is the
    stepping thread) inside the Guard. The stepping thread starts and stops with the app's lifespan."""
    config = config or ServerConfig()
    limits = config.limits
    metrics = Metrics()
    drain = Drain()
    worker = Worker(collab.pair, stop_strings=collab.stop_strings, max_batch=config.max_batch, max_len=config.max_len,
                    max_queue=config.max_queue, max_engines=config.max_engines, metrics=metrics,
                    prefill_tokens=config.prefill_tokens)
    texts = collab.pair.vocab.texts
    CompletionRequest, ChatCompletionRequest = schemas.request_models(limits, config.model_id)  # noqa: N806

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.close()

    app = FastAPI(title="baco", version=baco.__version__, lifespan=lifespan,
                  description="OpenAI-compatible collaborative decoding (a base model and its aligned counterpart)")
    app.state.worker, app.state.metrics, app.state.config = worker, metrics, config

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # loc is ("body", character offset), not a field
            at = [part for part in first.get("loc", ()) if isinstance(part, int)]
            message = f"the body is not valid JSON{f' (at character {at[0]})' if at else ''}: {first['msg']}"
            return error(400, message, code="json_invalid")
        if tuple(first.get("loc", ())) == ("body",):  # the body as a whole: empty, not JSON, or not an object
            message, code = body_problem(first, request.headers.get("content-type", ""))
            return error(400, message, code=code)
        named = another_model(first)
        if named is not None:
            return model_not_found(named, config.model_id)
        where = [str(part) for part in first.get("loc", ()) if part not in ("body", schemas.ONE, schemas.MANY)]
        message = f"{'.'.join(where)}: {field_problem(first)}" if where else field_problem(first)
        return error(400, message, param=".".join(where) or None, code=first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(BacoError)
    async def refused(request, exc: BacoError):
        code = "context_length_exceeded" if isinstance(exc, PromptTooLongError) else "invalid_value"
        return error(400, str(exc), param=getattr(exc, "param", None), code=code)  # (`requests.about` sets it)

    ok = {"description": "OK"}
    refusals = {status: {"model": schemas.ErrorResponse, "description": text} for status, text in
                ((400, "invalid request"), (404, "not the served model"), (413, "body too large"),
                 (429, "the server is full; retry later"))}
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string", "description": (
        "a chunk as JSON (object chat.completion.chunk or text_completion, with its tokens' provenance), "
        "or [DONE] at the end")}}, "description": "one server-sent event (with stream: true)"}
    streamed = {"text/event-stream": {"schema": event}}

    @app.get("/health", response_model=schemas.Health)
    @app.head("/health", include_in_schema=False)  # load balancers' and uptime checks' probe (one operation id)
    async def health():
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}, **ok}})
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    card = {"id": config.model_id, "object": "model", "created": int(time.time()), "owned_by": "baco"}  # (as vLLM)

    @app.get("/v1/models", response_model=schemas.ModelList)
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model:path}", response_model=schemas.ModelCard,
             responses={404: {"description": "not the served model"}})
    async def model(model: str):  # OpenAI's `client.models.retrieve(id)`
        if model != config.model_id:
            return model_not_found(model, config.model_id)
        return card

    TokenizeRequest, DetokenizeRequest = schemas.tokenize_models(config.model_id, collab.pair.vocab_size)  # noqa: N806
    tokenizer = collab.pair.aligned.tokenizer  # (the pair's shared vocabulary)

    @app.post("/tokenize", response_model=schemas.TokenizeResponse,
              responses={400: refusals[400], 404: refusals[404], 413: refusals[413]})
    async def tokenize(body: TokenizeRequest):  # type: ignore[valid-type]
        """vLLM's: a prompt's text as given (the ids logit_bias and stop_token_ids name), or a conversation as the
        models read it in a chat request (`tokens` the aligned model's, `base_tokens` the base model's)."""
        with about("prompt"):
            if (body.prompt is None) == (body.messages is None):
                raise BacoError("give either prompt (text, tokenized as given) or messages (a conversation)")
            if body.messages is not None and body.add_special_tokens is not None:
                raise BacoError("add_special_tokens applies to a prompt; messages are rendered as a chat request "
                                "renders them")
        base = None
        if body.messages is not None:
            with about("messages"):
                prompt = conversation(body.messages)
                base, ids = encode_request(prompt, 0, collab.prompt_format, collab.pair.base.tokenizer, tokenizer,
                                           context_length=sys.maxsize, name="the conversation")
        else:
            with about("prompt"):
                problem = unicode_problem(body.prompt)
                if problem:
                    raise BacoError(f"the prompt is not valid Unicode text ({problem})")
            ids = tokenizer(body.prompt, add_special_tokens=body.add_special_tokens is not False)["input_ids"]
        texts = collab.pair.vocab.texts
        return {"count": len(ids), "max_model_len": min(config.max_len, collab.pair.context_length), "tokens": ids,
                "token_strs": [texts[i] for i in ids] if body.return_token_strs else None, "base_tokens": base}

    @app.post("/detokenize", response_model=schemas.DetokenizeResponse,
              responses={400: refusals[400], 404: refusals[404], 413: refusals[413]})
    async def detokenize(body: DetokenizeRequest):  # type: ignore[valid-type]
        """vLLM's: the text of token ids (special tokens kept, as the tokenizer decodes them)."""
        return {"prompt": tokenizer.decode(body.tokens)}

    @app.post("/v1/completions", response_model=schemas.Completion,
              responses={**refusals, 200: {"content": streamed, **ok}})
    async def completions(body: CompletionRequest, request: Request):  # type: ignore[valid-type]
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        return await run(request, body, collab.prompt_format, prompts, chat=False,
                         logprobs=body.logprobs is not None, top=body.logprobs or 0)

    @app.post("/v1/chat/completions", response_model=schemas.ChatCompletion,
              responses={**refusals, 200: {"content": streamed, **ok}})
    async def chat(body: ChatCompletionRequest, request: Request):  # type: ignore[valid-type]
        with about("top_logprobs"):
            if body.top_logprobs and not body.logprobs:
                raise BacoError("top_logprobs needs logprobs: true")
        with about("messages"):
            prompt = conversation(body.messages)
        return await run(request, body, collab.prompt_format, [prompt], chat=True, logprobs=body.logprobs,
                         top=body.top_logprobs or 0)

    async def run(request: Request, body, fmt, prompts, *, chat: bool, logprobs: bool, top: int):
        with about("stream_options"):  # (as OpenAI's API and vLLM refuse it)
            if body.stream_options is not None and not body.stream:
                raise BacoError("stream_options is only allowed with stream: true")
        todo = plan(collab, fmt, prompts, body, limits=limits, max_len=config.max_len, default_router=config.router,
                    default_min_p=config.min_p, prompt_field="messages" if chat else "prompt")
        if drain.closing:  # it passed the door just before the shutdown began
            return shutting_down()
        stream = JobStream(len(todo.requests))
        job = Job(todo.requests, todo.sampling, todo.router, collab.stop_strings + todo.sampling.stop,
                  stream.deliver, top_logprobs=top)
        try:
            worker.submit(job)
        except QueueFull as full:
            return error(429, str(full), "rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        metrics.prompt_tokens.inc(todo.prompt_tokens)
        drain.running.add(stream)

        def answered():
            """However the request ended (finished, failed, cut off, client gone): it no longer runs, and its rows
            leave the batch (for a finished job, there are none left)."""
            drain.running.discard(stream)
            worker.cancel(job)

        shaper = Shaper(todo, config.model_id, chat=chat, logprobs=logprobs, texts=texts)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(sse(job, stream, shaper, include_usage), answered)
        try:
            return await whole(request, job, stream, shaper)
        finally:
            answered()

    async def gather(stream: JobStream, choices: int):
        tokens, finish = [[] for _ in range(choices)], [None] * choices
        async for kind, index, value in stream.messages():
            if kind == "tokens":
                tokens[index] += value
            elif kind == "finish":
                finish[index] = value
            else:
                raise Failure(kind, value)
        return tokens, finish

    async def whole(request: Request, job: Job, stream: JobStream, shaper: Shaper):
        done = asyncio.ensure_future(gather(stream, len(job.requests)))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                return Response(status_code=499)  # nobody is listening
            tokens, finish = done.result()
            return JSONResponse(shaper.whole(tokens, finish))
        except Failure as failure:
            return JSONResponse(failure.body, status_code=failure.status, headers=failure.headers)
        finally:
            gone.cancel()
            done.cancel()

    async def sse(job: Job, stream: JobStream, shaper: Shaper, include_usage: bool):
        """The chunks, then `data: [DONE]`; a request that fails (its engine, or a shutdown) ends with an error
        event, then `data: [DONE]` all the same."""
        tokens = [[] for _ in job.requests]
        if shaper.chat:
            for index in range(len(job.requests)):
                yield shaper.chunk(index, [], first=True)
        async for kind, index, value in stream.messages():
            if kind == "tokens":
                tokens[index] += value
                yield shaper.chunk(index, value)
            elif kind == "finish":
                yield shaper.chunk(index, [], value)
            else:
                yield Shaper.event(Failure(kind, value).body)
                break
        if include_usage:
            yield shaper.usage_chunk(tokens)
        yield "data: [DONE]\n\n"

    def error_response(description: str) -> dict:  # an error status in the schema
        return {"description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["responses"].pop("422", None)
                operation["responses"]["503"] = error_response("the server is shutting down (refused or cut off)")
                if config.api_key is not None and path != "/health":
                    operation["security"] = [{"bearer": []}]
                    operation["responses"]["401"] = error_response("missing or wrong API key")
        components = schema.setdefault("components", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        if config.api_key is not None:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    return Guard(app, api_key=config.api_key, max_body=limits.max_body_bytes, metrics=metrics, drain=drain)


async def disconnected(request: Request) -> None:
    """Returns when the client has gone."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

