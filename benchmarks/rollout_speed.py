"""GRPO rollout speed: G samples of each prompt, main's rollout loop vs the engine, in one run.

Rows (each the same prompts, G copies of each, as `align/grpo.py` submits them):
- main:   `align/rollout.sample` as it was before the one engine (read from git, `--baseline-rev`): its own
          loop over `model.forward` with a growing attention mask, every copy of a prompt prefilled;
- engine, --shared-prefill off: the engine's loop (static cache, lean forward), every row prefilled;
- engine, --shared-prefill on:  the engine prefilling each distinct prompt once and copying its KV cache to
          its G samples (what `rollout.sample` does now).
Prints generated tokens per second (prefill time included) and each row's ratio to main's. End-of-text never
stops a row early (no stop ids), so every row decodes --new-tokens tokens. Sampling at temperature 1, top-k
50, as GRPO samples. The model is a random-weight GPT (`--preset`, speed does not depend on the values).

    python benchmarks/rollout_speed.py                          # 8 prompts x G=8, 96-token prompts
    python benchmarks/rollout_speed.py --prompts 4 --group 8 --prompt-tokens 256
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from danlu.align.rollout import sample
from danlu.models.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


class ByteTokenizer:
    """Bytes as tokens (ids 0..255); pad = 256. Enough for both rollout implementations."""

    pad_token_id, eos_token_id, bos_token_id = 256, None, None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def main_sample(rev: str):
    """`sample` of align/rollout.py at git revision `rev` (main's loop), or None when git cannot show it."""
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:danlu/align/rollout.py"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "main_rollout.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("main_rollout", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["main_rollout"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.sample


def timed(fn, repeats: int) -> tuple[float, int]:
    """(best seconds of `repeats` runs, generated tokens of one run)."""
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        r = fn()
        best = min(best, time.perf_counter() - start)
        tokens = int(r.response_mask.sum())
    return best, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-tiny")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8, help="G: samples per prompt")
    p.add_argument("--prompt-tokens", type=int, default=96)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--baseline-rev", default="ed09d30", help="git revision of main's rollout loop")
    p.add_argument("--shared-prefill", choices=("on", "off", "both"), default="both")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig.from_name(args.preset, vocab_size=257, n_layer=args.n_layer, n_embd=args.n_embd,
                              block_size=args.prompt_tokens + args.new_tokens + 8)  # fmt: skip
    model = GPT(cfg).eval()
    tok = ByteTokenizer()
    prompts = [
        (f"prompt {i}: " + "the quick brown fox " * 64)[: args.prompt_tokens] for i in range(args.prompts)
    ]
    grouped = [q for q in prompts for _ in range(args.group)]  # each prompt G times, consecutively (grpo.py)
    kw = dict(max_new_tokens=args.new_tokens, temperature=1.0, top_k=50, seed=0, stop_ids=[])
    rows = []
    old = main_sample(args.baseline_rev)
    if old is not None:
        rows.append(("main (every copy prefilled)", lambda: old(model, tok, grouped, **kw)))
    else:
        print(f"(git cannot show {args.baseline_rev}:danlu/align/rollout.py; main's row is left out)")
    if args.shared_prefill in ("off", "both"):
        rows.append(
            ("engine, --shared-prefill off", lambda: sample(model, tok, grouped, **kw, share_prefill=False))
        )
    if args.shared_prefill in ("on", "both"):
        rows.append(("engine, --shared-prefill on", lambda: sample(model, tok, grouped, **kw)))
    print(f"GRPO rollout: {args.prompts} prompts x G={args.group}, {args.prompt_tokens}-token prompts, "
          f"{args.new_tokens} new tokens, {args.preset} n_layer={args.n_layer} n_embd={args.n_embd}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    base = None
    for name, fn in rows:
        fn()  # warm-up
        seconds, tokens = timed(fn, args.repeats)
        rate = tokens / seconds
        base = base or rate
        print(f"  {name:32s} {rate:9.1f} tokens/s   {seconds * 1000:8.1f} ms   x{rate / base:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
