"""Decoding: logits processors, search strategies and the batched KV-cache engine.

Modules, top to bottom: options.py (GenerationOptions, validation) -> processors.py (pure logits functions)
-> static.py (lean static-cache forward, CUDA graphs) -> steps.py (prefill / decode_one / reorder / rollback)
-> search.py (the one decoding loop and beam search over a stepping backend; contrastive, speculative)
-> rows.py (one row's tokens -> text and its Completion) -> engine.py (the one engine: prompts in, Completions
out; generate and stream); encoder_decoder.py (the seq2seq Transformer as a stepping backend);
quantize.py (int8 / int4 weights) and commands.py (`danlu generate`, `danlu chat`) stand aside.

`danlu.generate` is both this package and the public function `danlu.generate(model, tokenizer, prompt, ...)`:
the package object is made callable (it forwards to `engine.generate`), so `import danlu.generate.engine` can
never shadow the function with the module, whichever is imported first.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, model: Any, tokenizer: Any, prompt: Any, **options: Any) -> Any:
        from danlu.generate.engine import generate

        return generate(model, tokenizer, prompt, **options)


sys.modules[__name__].__class__ = _CallableModule
