"""`danlu export`: a model out to the engines that serve at scale — GGUF for llama.cpp / Ollama, or a Hugging
Face safetensors folder for transformers / vLLM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from danlu.errors import DanluError

HF_DTYPES = ("f32", "f16", "bf16")

# Ollama's Go template for ChatML, the format of danlu's default chat template and of SmolLM2's.
_CHATML_OLLAMA = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a model as GGUF (llama.cpp, Ollama) or a Hugging Face folder (transformers, vLLM)",
    )
    p.add_argument("--model", required=True, help="a danlu/HF checkpoint folder or a .gguf file")
    p.add_argument("--format", choices=("gguf", "hf"), default="gguf", help="output format (default: gguf)")
    p.add_argument(
        "--dtype",
        default=None,
        help="gguf: f32, f16 or q8_0 (default: f16); hf: f32, f16 or bf16 (default: the model's own)",
    )
    p.add_argument("--out", required=True, help="FILE.gguf for --format gguf, a folder for --format hf")
    p.add_argument("--ollama", action="store_true", help="gguf: also write a Modelfile beside the file")
    p.set_defaults(func=run_export)


def _modelfile(gguf_path: Path, tokenizer) -> str:
    lines = [f"FROM ./{gguf_path.name}"]
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in template:
        lines.append(f'TEMPLATE """{_CHATML_OLLAMA}"""')
        lines.append('PARAMETER stop "<|im_end|>"')
    elif tokenizer is not None and tokenizer.eos_token:
        lines.append(f"PARAMETER stop {tokenizer.eos_token!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


def run_export(args: argparse.Namespace) -> int:
    from danlu.models.checkpoints import load, save_model
    from danlu.models.gguf_export import GGUF_DTYPES, export_gguf
    from danlu.models.gpt import GPT

    out = Path(args.out)
    if args.format == "gguf":
        dtype = args.dtype or "f16"
        if dtype not in GGUF_DTYPES:
            raise DanluError(f"--dtype: {dtype!r} is not a GGUF type; choose one of {', '.join(GGUF_DTYPES)}")
    else:
        if args.ollama:
            raise DanluError("--ollama: a Modelfile points at a GGUF file; use it with --format gguf")
        dtype = args.dtype
        if dtype is not None and dtype not in HF_DTYPES:
            raise DanluError(
                f"--dtype: {dtype!r} is not a safetensors type; choose one of {', '.join(HF_DTYPES)}"
            )
    model, tokenizer = load(args.model)
    if args.format == "gguf":
        if not isinstance(model, GPT):
            raise DanluError(
                f"--model: {args.model} is a {type(model).__name__}; GGUF export covers decoder-only GPT models"
            )
        path = export_gguf(model, tokenizer, out, dtype=dtype, name=Path(args.model).stem)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {dtype})", file=sys.stderr)
        if args.ollama:
            modelfile = path.with_name("Modelfile")
            modelfile.write_text(_modelfile(path, tokenizer))
            print(f"wrote {modelfile}: `ollama create NAME -f {modelfile}`", file=sys.stderr)
        return 0
    import torch

    if dtype is not None:
        model = model.to({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype])
    save_model(model, out, tokenizer=tokenizer)
    print(
        f"wrote {out}/ (safetensors, {str(next(model.parameters()).dtype).removeprefix('torch.')})",
        file=sys.stderr,
    )
    return 0
