"""Request bodies of the OpenAI-compatible API (pydantic), and OpenAI-style errors.

Types are strict ("0.5" is not a number, 1 is not a string), so a wrong type is a 422 naming the field, as is a
value out of range. Fields OpenAI defines that danlu cannot honour (logprobs, suffix, image parts) are refused
with a 400 that says so, never silently ignored. Unknown extra fields are accepted and ignored, as OpenAI does.
Beyond OpenAI's sampling fields, the engine's own options are accepted under their danlu names (top_k, min_p,
repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty), as vLLM does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError


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
# length_penalty divides a beam's score by length**alpha: beyond |alpha| = 10 that power overflows a float for
# the lengths served (3**1000 raises OverflowError) and the float32 scores underflow to ties long before.
MAX_LENGTH_PENALTY = 10.0
# repetition_penalty divides positive logits and multiplies negative ones: 1e-300 or 1e300 turn them into
# inf/-inf and the sampling distribution into NaN; [0.01, 100] covers every value in use (1.0-2.0).
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0


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


Text = Annotated[str, Field(min_length=1)]
Texts = Text | Annotated[list[Text], Field(min_length=1)]  # a prompt or input: one text or a list of them


class Sampling(_Body):
    """The decoding fields shared by /v1/completions and /v1/chat/completions."""

    model: str
    max_tokens: _int(ge=1) | None = None
    # Below 1e-5 the engine's logits / temperature overflow float32 (1e-300 gave NaN probabilities); the server
    # decodes such a temperature greedily, which is the limit softmax(logits / T) tends to as T -> 0.
    # Defaults are GenerationOptions' (greedy), as for danlu.generate and the CLI (tests/test_cli_defaults.py).
    temperature: _optional(_number(ge=0, le=2)) = 0.0
    top_p: _optional(_number(gt=0, le=1)) = 1.0
    n: _int(ge=1) = 1
    stop: str | list[str] | None = None
    seed: _int(ge=SEED_MIN, le=SEED_MAX) | None = None
    presence_penalty: _optional(_number(ge=-2, le=2)) = 0.0
    frequency_penalty: _optional(_number(ge=-2, le=2)) = 0.0
    logit_bias: dict[str, _number(ge=-100, le=100)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # danlu's own options (vLLM accepts the same names)
    top_k: _int(ge=0) | None = 0
    min_p: _optional(_number(ge=0, le=1)) = 0.0
    repetition_penalty: _optional(_number(ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)) = 1.0
    no_repeat_ngram_size: _int(ge=0) | None = 0
    num_beams: _int(ge=1) | None = 1
    length_penalty: _optional(_number(ge=-MAX_LENGTH_PENALTY, le=MAX_LENGTH_PENALTY)) = 1.0
    min_tokens: _int(ge=0) | None = 0


class CompletionRequest(Sampling):
    prompt: Texts
    echo: bool = False
    logprobs: Integer | None = None
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


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: _int(ge=1) | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    logprobs: bool | None = None


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
