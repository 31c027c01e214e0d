"""Request bodies of the OpenAI-compatible API (pydantic), and OpenAI-style errors.

Types are strict ("0.5" is not a number, 1 is not a string), so a wrong type is a 422 naming the field, as is a
value out of range. Fields OpenAI defines that danlu cannot honour (logprobs, suffix, image parts) are refused
with a 400 that says so, never silently ignored. Unknown extra fields are accepted and ignored, as OpenAI does.
Beyond OpenAI's sampling fields, the engine's own options are accepted under their danlu names (top_k, min_p,
repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty), as vLLM does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
Probability = Annotated[float, Field(gt=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class Sampling(_Strict):
    """The decoding fields shared by /v1/completions and /v1/chat/completions."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = 0.0  # GenerationOptions' defaults (greedy)
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = 1.0
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = 0.0
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = 0.0
    logit_bias: dict[str, Annotated[Number, Field(ge=-100, le=100)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # danlu's own options (vLLM accepts the same names)
    top_k: Annotated[int, Field(ge=0)] | None = 0
    min_p: Annotated[Number, Field(ge=0, le=1)] | None = 0.0
    repetition_penalty: Annotated[Number, Field(gt=0)] | None = 1.0
    no_repeat_ngram_size: Annotated[int, Field(ge=0)] | None = 0
    num_beams: Annotated[int, Field(ge=1)] | None = 1
    length_penalty: Number | None = 1.0
    min_tokens: Annotated[int, Field(ge=0)] | None = 0


class CompletionRequest(Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


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


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
