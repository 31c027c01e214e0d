"""Request bodies of the OpenAI-compatible API (pydantic), and OpenAI-style errors.

Types are strict ("0.5" is not a number, 1 is not a string), so a wrong type is a 422 naming the field, as is a
value out of range. Fields OpenAI defines that danlu cannot honour (suffix, image parts) are refused
with a 400 that says so, never silently ignored. Unknown extra fields are accepted and ignored, as OpenAI does.
Beyond OpenAI's sampling fields, the engine's own options are accepted under their danlu names (top_k, min_p,
repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty), as vLLM does.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from danlu.flags import RANGE_KEYS
from danlu.generate.options import LENGTH_PENALTY_FORMS, GenerationOptions


class APIError(Exception):
    """An error answered as OpenAI's JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


Number = float | int


_KEYWORDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _integral(value: Any) -> Any:
    """7.0 is the integer 7, as JSON Schema's "integer" says (strict pydantic alone would refuse it); 7.5 and
    "7" stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else value


Integer = Annotated[int, BeforeValidator(_integral)]


def _int(**bounds: int) -> Any:
    """An Integer within bounds, described with JSON-schema keywords (the validator would leave pydantic's
    own ge/le in the document)."""
    schema = {"type": "integer", **{_KEYWORDS[k]: v for k, v in bounds.items()}}
    return Annotated[int, BeforeValidator(_integral), Field(**bounds), WithJsonSchema(schema)]


# Seeds: integers a JSON number carries exactly in every client (JavaScript's safe integers) and the OpenAPI
# document can state exactly (FastAPI writes bounds as floats, so 2**63 - 1 would read as 2**63); torch's
# generators take them all (2**64 raised "Overflow when unpacking long long", a 500).
SEED_MIN, SEED_MAX = -(2**53), 2**53
# The engine's options are the source of every decoding field's range, default and description: the field
# metadata of GenerationOptions (danlu.flags.option), which the CLI's flags and validate_options read too.
_OPTIONS = {f.name: f for f in fields(GenerationOptions)}


def _bounds(name: str, **narrower: float) -> dict[str, float]:
    """The engine's bounds of option `name`, with the server's narrower ones (OpenAI's) on top."""
    meta = _OPTIONS[name].metadata
    return {**{k: meta[k] for k in RANGE_KEYS if k in meta}, **narrower}


def _default(name: str) -> Any:
    return _OPTIONS[name].default


def _help(name: str) -> str:
    return _OPTIONS[name].metadata["help"]


def _surrogate_path(value: Any, where: str) -> str | None:
    """The first place in a decoded JSON value holding a lone surrogate (in a string or a key), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # fails exactly on lone surrogates, at C speed (a 1 MB body takes ~1 ms)
        except UnicodeEncodeError:
            return where or "body"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            inner = f"{where}.{k}" if where else str(k)
            found = _surrogate_path(k, inner) or _surrogate_path(v, inner)
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_path(v, f"{where}[{i}]")
            if found:
                return found
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Body(_Strict):
    """A whole request body: its text is checked for lone surrogates before any field is validated."""

    @model_validator(mode="before")
    @classmethod
    def _no_surrogates(cls, data: Any) -> Any:
        where = _surrogate_path(data, "")
        if where is not None:
            raise PydanticCustomError(
                "invalid_unicode",
                "{where} holds a lone UTF-16 surrogate (like \\ud800), which is not text; send valid Unicode",
                {"where": where},
            )
        return data


class StreamOptions(_Strict):
    include_usage: bool = False


def _number(**bounds: float) -> Any:
    """A number (JSON integer or float, strict) within bounds, described as one `{"type": "number", "minimum":
    ...}` schema: pydantic would write float | int as an anyOf with the bounds outside it, which JSON-schema
    validators and test generators ignore."""
    schema = {"type": "number", **{_KEYWORDS[k]: v for k, v in bounds.items()}}
    return Annotated[float | int, Field(**bounds), WithJsonSchema(schema)]


def _optional(t: Any) -> Any:
    """An optional number field: the number's schema or null."""
    inner = t.__metadata__[-1].json_schema
    return Annotated[t | None, WithJsonSchema({"anyOf": [inner, {"type": "null"}]})]


def _optional_option(t: Any, name: str) -> Any:
    """Optional field for engine option `name`: t's schema or null, described by the option's help text."""
    schema = {"anyOf": [t.__metadata__[-1].json_schema, {"type": "null"}], "description": _help(name)}
    return Annotated[t | None, WithJsonSchema(schema)]


def _option_number(name: str, **narrower: float) -> Any:
    """Optional number field for engine option `name`: its range (narrowed by the server), its help text."""
    return _optional_option(_number(**_bounds(name, **narrower)), name)


def _option_int(name: str) -> Any:
    """Optional integer field for engine option `name`."""
    return _optional_option(_int(**_bounds(name)), name)


Text = Annotated[str, Field(min_length=1)]
Texts = Text | Annotated[list[Text], Field(min_length=1)]  # a prompt or input: one text or a list of them


class Sampling(_Body):
    """The decoding fields shared by /v1/completions and /v1/chat/completions. Ranges, defaults and
    descriptions are the engine's (GenerationOptions' field metadata), narrowed where OpenAI's API is
    narrower (temperature <= 2); defaults are the library's (greedy), as for danlu.generate and the CLI
    (tests/test_cli_defaults.py)."""

    model: str
    max_tokens: _option_int("max_new_tokens") = None  # unset: as many as fit (ServeConfig.default_max_tokens)
    # Below 1e-5 the server decodes a temperature greedily (the limit softmax(logits / T) tends to as T -> 0;
    # the engine does the same for tiny T instead of overflowing).
    temperature: _option_number("temperature", le=2) = _default("temperature")
    top_p: _option_number("top_p") = _default("top_p")
    n: _int(ge=1) = 1
    stop: str | list[str] | None = None
    seed: _int(ge=SEED_MIN, le=SEED_MAX) | None = None
    presence_penalty: _option_number("presence_penalty") = _default("presence_penalty")
    frequency_penalty: _option_number("frequency_penalty") = _default("frequency_penalty")
    logit_bias: dict[str, _number(ge=-100, le=100)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # danlu's own options (vLLM accepts the same names)
    top_k: _option_int("top_k") = _default("top_k")
    min_p: _option_number("min_p") = _default("min_p")
    repetition_penalty: _option_number("repetition_penalty") = _default("repetition_penalty")
    no_repeat_ngram_size: _option_int("no_repeat_ngram_size") = _default("no_repeat_ngram_size")
    num_beams: _option_int("num_beams") = _default("num_beams")
    length_penalty: _option_number("length_penalty") = _default("length_penalty")
    length_penalty_form: Literal[LENGTH_PENALTY_FORMS] | None = _default("length_penalty_form")  # type: ignore[valid-type]
    min_tokens: _option_int("min_new_tokens") = _default("min_new_tokens")


TokenIds = Annotated[list[_int(ge=0)], Field(min_length=1)]  # a prompt given as token ids (OpenAI allows it)


class CompletionRequest(Sampling):
    prompt: Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    echo: bool = False
    # Completions only: 0 with echo scores the prompt without generating (lm-evaluation-harness's loglikelihood).
    max_tokens: _optional_option(_int(ge=0), "max_new_tokens") = None
    logprobs: _int(ge=0) | None = None  # 0..5 most likely tokens per position (serve/logprobs.py; 400 beyond)
    suffix: str | None = None
    best_of: _int(ge=1) | None = None  # only best_of == n is served (it then changes nothing)


class ToolCallFunction(_Strict):
    name: str
    arguments: str  # a JSON object, as text (OpenAI's format)


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ContentPart(_Strict):
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    """tool_choice = {"type": "function", "function": {"name": ...}}: that tool, which must be among `tools`."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(_Strict):
    """response_format.json_schema: the schema (any JSON Schema llguidance compiles; unset: any object).
    Decoding always follows it, so `strict` changes nothing."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


# text, any JSON object, or a JSON Schema: grammar-constrained decoding (danlu/generate/grammar.py)
ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: _int(ge=1) | None = None
    tools: Annotated[list[ToolSpec], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: _int(ge=0) | None = None  # 0..20, with logprobs: true (serve/logprobs.py; 400 otherwise)


class TokenizeRequest(_Body):
    """POST /tokenize, as vLLM serves it (lm-evaluation-harness's "remote" tokenizer uses it)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[_int(ge=0)]


class EmbeddingRequest(_Body):
    model: str
    input: Texts
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Integer | None = None
    user: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """What every error reply holds (OpenAI's format)."""

    error: ErrorDetail
