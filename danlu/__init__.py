"""丹炉 danlu: the whole life of a language model in one small, readable PyTorch codebase.

Public surface (stable): `danlu.load`, `danlu.save`, `danlu.generate`, `danlu.stream`.
Imports are lazy so `import danlu` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "save", "generate", "stream", "__version__"]


def load(path: Any, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """`(model, tokenizer)` from a danlu checkpoint, a Hugging Face model dir, or a `.gguf` file."""
    from danlu.models.checkpoints import load as _load

    return _load(path, device=device, dtype=dtype)


def save(model: Any, tokenizer: Any, path: Any) -> Any:
    """Save a model and its tokenizer as one checkpoint directory."""
    from danlu.models.checkpoints import save as _save

    return _save(model, tokenizer, path)


def __getattr__(name: str) -> Any:
    # `danlu.generate` is the callable package danlu/generate (see its __init__), imported on first use.
    if name == "generate":
        import danlu.generate

        return danlu.generate
    raise AttributeError(f"module 'danlu' has no attribute {name!r}")


def stream(model: Any, tokenizer: Any, prompt: str, **options: Any) -> Any:
    """Yield the continuation of `prompt` piece by piece; see `danlu.generate.engine.stream`."""
    from danlu.generate.engine import stream as _stream

    return _stream(model, tokenizer, prompt, **options)
