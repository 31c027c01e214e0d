"""丹炉 danlu: the whole life of a language model in one small, readable PyTorch codebase.

Public surface (stable): `danlu.load`, `danlu.save`, `danlu.generate`, `danlu.stream`.
Imports are lazy so `import danlu` stays cheap.
"""

from __future__ import annotations

from typing import Any

# The subpackage danlu/generate (decoding) is imported first, so that the function `generate` below is what
# `danlu.generate` names: importing a submodule sets the parent's attribute only when the submodule is first
# loaded, which is now, before the `def`. Later `from danlu.generate.engine import ...` leave the function in
# place. The package's __init__ imports nothing, so `import danlu` stays cheap. (docs/ARCHITECTURE.md, "Layers")
from danlu import generate as _decoding  # noqa: F401  (loaded before the def below, see above)

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


def generate(model: Any, tokenizer: Any, prompt: Any, **options: Any) -> Any:
    """The continuation of `prompt` (a string, or a list of strings decoded as one batch); see
    `danlu.generate.engine.generate` for the options (the same names as `danlu generate --help`)."""
    from danlu.generate.engine import generate as _generate

    return _generate(model, tokenizer, prompt, **options)


def stream(model: Any, tokenizer: Any, prompt: str, **options: Any) -> Any:
    """Yield the continuation of `prompt` piece by piece; see `danlu.generate.engine.stream`."""
    from danlu.generate.engine import stream as _stream

    return _stream(model, tokenizer, prompt, **options)
