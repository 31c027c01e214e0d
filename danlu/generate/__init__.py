"""Decoding: logits processors, search strategies and the batched KV-cache engine.

Modules, top to bottom: options.py (GenerationOptions, validation) -> processors.py (pure logits functions)
-> static.py (lean static-cache forward, CUDA graphs) -> steps.py (prefill / decode_one / reorder / rollback)
-> search.py (the one decoding loop and beam search over a stepping backend; contrastive) -> speculative.py
-> rows.py (one row's tokens -> text and its Completion) -> engine.py (the one engine: prompts in, Completions
out; generate and stream) -> continuous.py (a slot batch rows join and leave between steps: the server's
continuous batching) with prefix_cache.py; encoder_decoder.py (the seq2seq Transformer as a stepping backend);
quantize.py (int8 / int4 weights) stands aside; the commands (`danlu generate`, `danlu chat`) are
danlu/cli/generate.py.

The public function `danlu.generate(model, tokenizer, prompt, ...)` is defined in danlu/__init__.py (it calls
`engine.generate`); this package is reached by its submodules: `from danlu.generate.engine import generate`,
`from danlu.generate import engine`. This file imports nothing, so `import danlu` stays cheap.
"""
