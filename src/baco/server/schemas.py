"""The request and response bodies, as pydantic models: they validate requests and make the OpenAPI schema.

Request models are strict (no type coercion, unknown fields refused) and built per server by
`request_models(limits, model_id)`, so that the schema states the server's own limits and model name.
Fields beyond OpenAI's are marked "baco extension"; standard clients ignore them in responses.
"""

from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from baco.decode.sampling import LOGIT_BIAS_LIMIT, LOGIT_BIAS_MAX, STOP_TOKEN_IDS_MAX


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond these the server answers 400 (413 for the body, 429 when full)."""

    max_tokens: int  # per choice; also bounded by the room left in a slot of `max_len` tokens
    default_max_tokens: int  # never more than max_tokens
    max_prompt_tokens: int
    max_n: int
    max_prompts: int
    max_stop: int = 8
    max_body_bytes: int = 1 << 20

    def __post_init__(self):
        """The default is capped at `max_tokens`: a request that leaves max_tokens out must not get more than one
        that asks is allowed (as it is capped at the room left in a slot)."""
        object.__setattr__(self, "default_max_tokens", min(self.default_max_tokens, self.max_tokens))


# ---- responses --------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class TokenProvenance(BaseModel):
    """baco extension: who wrote one token and why."""

    token: int = Field(description="token id")
    text: str = Field(description="the content this token adds; the texts of a choice's tokens join to its text")
    writer: Literal["base", "aligned", "mix"]
    reason: str = Field(description="the router's reason (e.g. 'p<0.5', 'punc', 'word-continuation')")
    base_top1_prob: float = Field(description="the base model's top-1 probability at this step")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="prompt tokens of the aligned model's rendering")
    completion_tokens: int
    total_tokens: int
    base_tokens: int = Field(description="baco extension: completion tokens the base model wrote")
    base_share: float = Field(description="baco extension: base_tokens / completion_tokens (0 when none)")


class BacoInfo(BaseModel):
    """baco extension: what decides the samples (repeat a request with this seed to get them again)."""

    router: str
    seed: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    finish_reason: Literal["stop", "length"]
    provenance: list[TokenProvenance]


class Body(BaseModel):
    id: str
    created: int
    model: str
    usage: Usage
    baco: BacoInfo


class ChatChoice(Choice):
    message: ChatMessage
    logprobs: Optional[ChatLogprobs] = None


class ChatCompletion(Body):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: Optional[list[dict[str, float]]] = None
    text_offset: list[int]


class CompletionChoice(Choice):
    text: str
    logprobs: Optional[CompletionLogprobs] = None


class Completion(Body):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "baco"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class TokenizeResponse(BaseModel):
    """vLLM's /tokenize answer, plus the base model's rendering of a conversation."""

    count: int
    max_model_len: int = Field(description="tokens a slot holds: --max-len or the models' context if shorter")
    tokens: list[int] = Field(description="a prompt's text as given, or the aligned model's rendering of messages")
    token_strs: Optional[list[str]] = Field(None, description="each token's text, with return_token_strs: true")
    base_tokens: Optional[list[int]] = Field(None, description=(
        "baco extension, with messages: the base model's rendering of the conversation (its plain-text template)"))


class DetokenizeResponse(BaseModel):
    prompt: str


# ---- requests ---------------------------------------------------------------------------------------------
ONE, MANY = "one", "many"  # the two branches of a one-or-a-list field, as pydantic's error locations name them


def one_or_many(one, many):
    """`one | many` where a list takes the list branch and anything else the other: only that branch reports errors
    (a plain union reports both, and "prompt.str: Input should be a valid string" hid the list's real complaint)."""
    return Annotated[Union[Annotated[one, Tag(ONE)], Annotated[many, Tag(MANY)]],
                     Discriminator(lambda value: MANY if isinstance(value, list) else ONE)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, value):
        """Images, audio and files are content parts of OpenAI's API that a text model cannot read: say so, rather
        than that the part lacks a `text` field."""
        if isinstance(value, dict) and isinstance(value.get("type"), str) and value["type"] != "text":
            raise PydanticCustomError("unsupported_content", "only text content parts are supported (type 'text'), "
                                      "got a part of type '{kind}'", {"kind": value["type"]})
        return value


# fields of an assistant message in OpenAI's responses that a text-only server never sets; the openai client's
# `message.model_dump()` holds them as null (or []), so a replayed answer carries them
UNSET_ASSISTANT_FIELDS = ("refusal", "annotations", "audio", "function_call", "tool_calls")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: one_or_many(str, list[TextPart])  # type: ignore[valid-type]
    name: Optional[str] = Field(None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _replayed_answer(cls, value):
        """An earlier answer sent back as the client dumped it (`reply.choices[0].message.model_dump()`): its null
        or empty `refusal`, `tool_calls`, ... say nothing and are dropped, as vLLM ignores them. With a value they
        are still refused as unknown fields (a text model has no tools)."""
        if isinstance(value, dict) and value.get("role") == "assistant":
            value = {key: item for key, item in value.items()
                     if not (key in UNSET_ASSISTANT_FIELDS and (item is None or item == []))}
        return value

    @property
    def text(self) -> str:
        """The content's text; text parts joined by newlines, as the library (`prompts.content_text`) and vLLM do."""
        return self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)


def request_models(limits: Limits, model_id: str) -> tuple[type[BaseModel], type[BaseModel]]:
    """(CompletionRequest, ChatCompletionRequest) with this server's limits and model name in their schema."""
    Model = Literal[model_id]  # noqa: N806 - a type
    StopString = Annotated[str, Field(min_length=1, max_length=256)]  # noqa: N806
    Stops = Annotated[list[StopString], Field(max_length=limits.max_stop)]  # noqa: N806
    Stop = Optional[one_or_many(StopString, Stops)]  # noqa: N806
    Prompts = one_or_many(str, Annotated[list[str], Field(min_length=1, max_length=limits.max_prompts)])  # noqa: N806
    TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]  # noqa: N806 - JSON's object keys are strings
    Bias = Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT)]  # noqa: N806
    strict = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # NaN would pass as "out of range"

    class Common(BaseModel):
        model_config = strict
        model: Model  # type: ignore[valid-type]
        max_tokens: Optional[int] = Field(None, ge=1, le=limits.max_tokens, description=(
            f"per choice; default {limits.default_max_tokens}, never more than the room left in a slot"))
        temperature: Optional[float] = Field(1.0, ge=0, le=2, description="0 = greedy; null = the default")
        top_p: Optional[float] = Field(1.0, gt=0, le=1, description="null = the default")
        n: Optional[int] = Field(1, ge=1, le=limits.max_n, description="samples per prompt (rows of one batch)")
        stop: Stop = Field(None, description="extra stop strings: the text ends before the first one")
        seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="default: a fresh one, in `baco.seed`")
        stream: Optional[bool] = False
        stream_options: Optional[StreamOptions] = None
        user: Optional[str] = Field(None, max_length=256)
        presence_penalty: Optional[float] = Field(0.0, ge=-2, le=2, description=(
            "subtracted from the logit of each token already in the text; 0 = off"))
        frequency_penalty: Optional[float] = Field(0.0, ge=-2, le=2, description=(
            "subtracted from a token's logit once per time it is in the text; 0 = off"))
        repetition_penalty: Optional[float] = Field(1.0, gt=0, description=(
            "vLLM extension: a token of the prompt or the text has its logit divided by it (if positive; multiplied "
            "if not); 1 = off"))
        logit_bias: Optional[dict[TokenId, Bias]] = Field(None, max_length=LOGIT_BIAS_MAX, description=(
            "token id (a string of digits) -> a bias in [-100, 100] added to that token's logit in each model before "
            "it is drawn (-100 bans it, +100 forces it)"))
        stop_token_ids: Optional[list[Annotated[int, Field(ge=0, le=2**31 - 1)]]] = Field(
            None, max_length=STOP_TOKEN_IDS_MAX, description=(
                "vLLM extension: token ids that end a choice when drawn (finish_reason 'stop'); their text stays"))
        min_tokens: Optional[int] = Field(0, ge=0, le=2**31 - 1, description=(
            "vLLM extension: the models' end tokens and stop_token_ids are not drawn before a choice has this many "
            "tokens (stop strings still end it); at most max_tokens; 0 = off"))
        router: Optional[str] = Field(None, max_length=64, description=(
            "baco extension: a router or baseline with its value, e.g. 'p-punc:0.5', 'nudge:0.3' (`baco routers`)"))
        min_p: Optional[float] = Field(None, ge=0, le=1, description="baco extension: default the server's --min-p")
        top_k: Optional[int] = Field(0, ge=-1, le=2**31 - 1, description="baco extension: 0 or -1 = off; null = 0")

        @field_validator("temperature", "top_p", "top_k", "n", "stream", "presence_penalty", "frequency_penalty",
                         "repetition_penalty", "min_tokens", "logprobs",
                         check_fields=False)  # logprobs: each request's own (chat: a bool)
        @classmethod
        def _null_means_the_default(cls, value, info: ValidationInfo):
            """OpenAI's API (and vLLM's) document these fields as nullable, and clients send null for "not set";
            the other nullable fields (max_tokens, stop, seed, user, ...) already read None as their default."""
            return cls.model_fields[info.field_name].default if value is None else value

        def stop_strings(self) -> tuple[str, ...]:
            return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    class CompletionRequest(Common):
        prompt: Prompts = Field(description=(
            f"a prompt or up to {limits.max_prompts} prompts, each read the way `baco generate --prompt` reads one: "
            "the aligned model sees it in its chat template, the base model in the plain-text template"))
        logprobs: Optional[int] = Field(None, ge=0, le=5,
                                        description="log-probs of each token and its top alternatives")

        @field_validator("prompt", mode="before")
        @classmethod
        def _text_prompts(cls, value):
            """OpenAI's API also takes a prompt as token ids (a list of integers, or a list of such lists); the pair
            reads text, rendered in each model's own template, so ids are refused as such."""
            if isinstance(value, list) and value and (all(isinstance(item, list) for item in value) or all(
                    isinstance(item, int) and not isinstance(item, bool) for item in value)):
                raise PydanticCustomError("token_ids_unsupported", "token-id prompts are not supported: send the "
                                          "prompt as text (a string, or a list of strings)")
            return value

    class ChatCompletionRequest(Common):
        messages: list[Message] = Field(min_length=1, max_length=256, description=(
            "system/developer messages first, then user and assistant turns in alternation, ending with a user turn"))
        max_completion_tokens: Optional[int] = Field(None, ge=1, le=limits.max_tokens, description="= max_tokens")
        logprobs: Optional[bool] = False
        top_logprobs: Optional[int] = Field(None, ge=0, le=20)

    return CompletionRequest, ChatCompletionRequest


def tokenize_models(model_id: str, vocab_size: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """(TokenizeRequest, DetokenizeRequest): vLLM's /tokenize and /detokenize bodies (`model` optional there)."""
    Model = Literal[model_id]  # noqa: N806 - a type
    TokenId = Annotated[int, Field(ge=0, lt=vocab_size)]  # noqa: N806
    strict = ConfigDict(extra="forbid", strict=True)

    class TokenizeRequest(BaseModel):
        model_config = strict
        model: Optional[Model] = None  # type: ignore[valid-type]
        prompt: Optional[str] = Field(None, max_length=2**20, description=(
            "text to tokenize as given (no template): the ids to name in logit_bias or stop_token_ids"))
        messages: Optional[list[Message]] = Field(None, min_length=1, max_length=256, description=(
            "a conversation, rendered as a chat request renders it for each model (tokens: the aligned model's)"))
        add_special_tokens: Optional[bool] = Field(None, description=(
            "with prompt: the tokenizer's special tokens around the text (default true, as in vLLM)"))
        return_token_strs: Optional[bool] = False

    class DetokenizeRequest(BaseModel):
        model_config = strict
        model: Optional[Model] = None  # type: ignore[valid-type]
        tokens: list[TokenId] = Field(max_length=2**20, description=f"token ids, each below {vocab_size}")

    return TokenizeRequest, DetokenizeRequest
