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
    `danlu.generate.engine.generate` for the options (the same names as `danlu generate --help`).

    Without compile= / quantize= it decodes by the fastest measured path for the model and device, as
    `danlu generate` does (`danlu.generate.fast_path.library_decoding`: a GGUF's own blocks with the step
    compiled, or the compiled step for 50M+ parameters), and says once on stderr which (quiet=True silences
    it). compile=False / quantize="none" (or "int8", "int4", "gguf") override."""
    from danlu.generate.engine import generate as _generate

    model, options = _decoding_model(model, options)
    return _generate(model, tokenizer, prompt, **options)


def stream(model: Any, tokenizer: Any, prompt: str, **options: Any) -> Any:
    """Yield the continuation of `prompt` piece by piece; see `danlu.generate.engine.stream`. The decoding
    path is chosen as in `generate`."""
    from danlu.generate.engine import stream as _stream

    model, options = _decoding_model(model, options)
    return _stream(model, tokenizer, prompt, **options)


def _decoding_model(model: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the model to decode with, the options with compile= set and quantize= / quiet= taken out)."""
    from danlu.generate.fast_path import library_decoding

    options = dict(options)
    quantize, quiet, compile = (
        options.pop("quantize", "auto"),
        options.pop("quiet", False),
        options.get("compile"),
    )
    one_step = (  # beam search and speculative decoding do not run the compiled step: nothing to choose
        options.get("num_beams", 1) == 1
        and options.get("draft_model") is None
        and options.get("draft", "none") == "none"
    )
    if not one_step and compile is None and quantize == "auto":
        return model, options
    model, options["compile"] = library_decoding(model, quantize, compile, quiet)
    return model, options
