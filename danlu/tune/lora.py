"""LoRA: a frozen weight plus a trainable low-rank bypass (Hu et al. 2021; notes 004 §8).

Notes 004: "LoRA adds a low-rank bypass beside chosen weights of the pretrained model — a down-projection then
an up-projection — freezes the model's own parameters and trains only the down matrix A and the up matrix B."

    h = W x + (alpha / r) · B A x        W: (out, in) frozen;  A: (r, in);  B: (out, r), r << min(in, out)

A starts like nn.Linear's weight and B at zero, so training starts from the unchanged model (the paper, §4.1).
After training, W' = W + (alpha / r) B A can be merged in: inference costs nothing extra; `unmerge` undoes it.

Targets and danlu's fused attention. danlu computes q, k and v with one Linear `attn.qkv` whose output rows are
[q (n_head·hs) | k (n_kv_head·hs) | v (n_kv_head·hs)]. A target "q", "k" or "v" is a LoRA part on that fused
layer whose B writes only its own slice of the output rows — exactly a LoRA on a separate q_proj / v_proj.
Targets (matched like PEFT: a Linear whose name is the target or ends with "." + target):
    "q", "k", "v" (slices of attn.qkv; also "q_proj", "k_proj", "v_proj"), "qkv" / "attn.qkv" / "c_attn" (the
    whole fused layer), "o" / "o_proj" / "attn.proj", "mlp.fc", "mlp.proj", "mlp.gate", "mlp.up", "mlp.down"
    (and their HF names gate_proj, up_proj, down_proj, c_fc). The default is ("q", "v"), as in the paper.

Adapters are saved alone in PEFT's layout (adapter_config.json + adapter_model.safetensors with
`base_model.model.<HF module>.lora_{A,B}.weight`), on the Hugging Face names of `danlu.models.checkpoints`:
a LLaMA-shaped model gets separate q_proj / v_proj adapters; a GPT-2 (whose c_attn is fused in HF too) gets one
c_attn adapter of rank Σr whose A stacks the parts' A and whose B is block-diagonal over their output slices.
So `peft.PeftModel.from_pretrained(transformers_model, adapter_dir)` reproduces danlu's outputs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError

FUSED_PARTS = ("q", "k", "v")
ALIASES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o": "attn.proj",
    "o_proj": "attn.proj",
    "c_attn": "attn.qkv",
    "qkv": "attn.qkv",
    "gate_proj": "mlp.gate",
    "up_proj": "mlp.up",
    "down_proj": "mlp.down",
    "c_fc": "mlp.fc",
}
ALL = "all"  # the part name of a LoRA on a whole layer


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    quantize_base: int | None = None  # QLoRA: hold the frozen base in 4-bit NF4 or int8 (danlu.tune.qlora)

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        if self.r < 1:
            raise DanluError(f"LoRA rank r must be >= 1, got {self.r}")
        if not self.alpha > 0:
            raise DanluError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise DanluError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise DanluError("LoRA needs at least one target layer, e.g. --lora-targets q v")
        if self.quantize_base not in (None, 4, 8):
            raise DanluError(f"--quantize-base must be 4 (NF4) or 8 (int8) bits, got {self.quantize_base!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus low-rank parts; part p adds scaling_p · B_p A_p x to output rows [start_p, end_p)."""

    def __init__(self, base: nn.Linear, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.rows: dict[str, tuple[int, int]] = {}
        self.scaling: dict[str, float] = {}
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def add_part(self, name: str, rows: tuple[int, int], r: int, scaling: float) -> None:
        start, end = rows
        dev, dtype = self.base.weight.device, self.base.weight.dtype
        A = torch.empty(r, self.base.in_features, device=dev, dtype=dtype)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT and loralib do
        self.lora_A[name] = nn.Parameter(A)
        self.lora_B[name] = nn.Parameter(torch.zeros(end - start, r, device=dev, dtype=dtype))
        self.rows[name], self.scaling[name] = (start, end), scaling

    def delta_weight(self, name: str) -> torch.Tensor:
        """scaling · B A for one part, (end - start, in)."""
        return self.scaling[name] * (self.lora_B[name] @ self.lora_A[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        x = self.dropout(x)
        out = y.shape[-1]
        for name, (start, end) in self.rows.items():
            d = (x @ self.lora_A[name].t()) @ self.lora_B[name].t()  # (..., r) -> (..., end - start)
            y = y + F.pad(d * self.scaling[name], (start, out - end))  # B writes only its rows
        return y

    @torch.no_grad()
    def merge(self) -> None:
        """W[start:end] += scaling · B A for every part (idempotent)."""
        if not self.merged:
            for name, (start, end) in self.rows.items():
                self.base.weight[start:end] += self.delta_weight(name)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for name, (start, end) in self.rows.items():
                self.base.weight[start:end] -= self.delta_weight(name)
            self.merged = False

    def extra_repr(self) -> str:
        parts = ", ".join(f"{n}: rows {s}:{e} r={self.lora_A[n].shape[0]}" for n, (s, e) in self.rows.items())
        return f"parts={{{parts}}}"


# ------------------------------------------------------------------------------------------- targets
def _fused_rows(parent: nn.Module) -> dict[str, tuple[int, int]]:
    """Output rows of q, k, v in a fused attention `qkv` Linear, from its attention module's head counts."""
    hs, nh, nkv = parent.head_size, parent.n_head, parent.n_kv_head
    q, kv = nh * hs, nkv * hs
    return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    # The (possibly tied) output head is left out: merging into a tied weight would change the embeddings too.
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")}


def available_targets(model: nn.Module) -> list[str]:
    """Target names that match at least one layer of `model` (for error messages and --help)."""
    names = set()
    for n in _linears(model):
        short = re.sub(r"^.*?\b(blocks|layers|h)\.\d+\.", "", n)
        names.add(short)
        if n.endswith("qkv"):
            names.update(FUSED_PARTS)
    return sorted(names)


def resolve_targets(model: nn.Module, targets: list[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """{Linear name: {part: output rows}} for the targets; a target matching no layer is a DanluError."""
    linears = _linears(model)
    modules = dict(model.named_modules())
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for target in targets:
        t = ALIASES.get(target, target)
        hits = 0
        for name, lin in linears.items():
            if t in FUSED_PARTS:
                if not name.endswith("qkv"):
                    continue
                parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
                if not hasattr(parent, "n_kv_head"):
                    continue
                found.setdefault(name, {})[t] = _fused_rows(parent)[t]
            elif name == t or name.endswith("." + t):
                found.setdefault(name, {})[ALL] = (0, lin.out_features)
            else:
                continue
            hits += 1
        if not hits:
            raise DanluError(
                f"LoRA target {target!r} matches no linear layer of this model; available targets: "
                f"{', '.join(available_targets(model))}"
            )
    for name, parts in found.items():
        if ALL in parts and len(parts) > 1:  # the whole layer already covers q, k and v
            found[name] = {ALL: parts[ALL]}
    return found


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze every parameter of `model`, then wrap the target layers with trainable LoRA parts (in place).

    Returns the wrapped layer names. Only the A and B matrices have requires_grad afterwards."""
    for p in model.parameters():
        p.requires_grad_(False)
    found = resolve_targets(model, cfg.targets)
    for name, parts in found.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer, cfg.dropout)
            _set_module(model, name, layer)
        for part, rows in parts.items():
            layer.add_part(part, rows, cfg.r, cfg.scaling)
    if cfg.quantize_base is not None:
        from danlu.tune.qlora import quantize_frozen_base

        quantize_frozen_base(model, cfg.quantize_base)
    return sorted(found)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter into its weight and put the plain nn.Linear back: a normal model again (in place).

    A QLoRA base is dequantised first (to the dtype the base had), so the merged model is a plain model."""
    from danlu.tune.qlora import dequantize_base

    dequantize_base(model)
    for name, layer in lora_layers(model).items():
        layer.merge()
        _set_module(model, name, layer.base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# --------------------------------------------------------------------- the lifecycle every trainer uses
# wrap (`wrap_lora`) -> train the adapters -> save mid-run as a merged copy (`merged_copy`) -> at the end save
# the adapters alone and merge them in place (`finish_lora`); `load_adapter` attaches saved ones again.
# SFT, DPO and PPO call these three, so a LoRA run of any stage saves and merges the same way. Each is a
# no-op without a LoRAConfig, so a trainer needs no `if lora` branches.


def wrap_lora(model: nn.Module, cfg: LoRAConfig | None) -> nn.Module:
    """`apply_lora(model, cfg)` when a config is given (in place); the model either way."""
    if cfg is not None:
        apply_lora(model, cfg)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """The model as a plain one to save while training goes on: a merged deep copy if it holds adapters (the
    trained one keeps its adapters), else the model itself."""
    if not lora_layers(model):
        return model
    import copy

    return merge_and_unload(copy.deepcopy(model))


def finish_lora(
    model: nn.Module, cfg: LoRAConfig | None, adapter_dir: str | Path | None = None,
    base_model_name_or_path: str | None = None,
) -> Path | None:  # fmt: skip
    """End of a LoRA run: save the adapters alone to adapter_dir (PEFT layout, naming the base) if one is
    given, then merge them into the weights in place. Returns the adapter folder (None without a config or a
    folder)."""
    if cfg is None:
        return None
    saved = (
        save_adapter(model, adapter_dir, cfg, base_model_name_or_path=base_model_name_or_path)
        if adapter_dir is not None
        else None
    )
    merge_and_unload(model)
    return saved


# ------------------------------------------------------------------------------------------- PEFT layout
_LLAMA = {"attn.proj": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
          "mlp.down": "mlp.down_proj", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
          "v": "self_attn.v_proj"}  # fmt: skip
_GPT2 = {
    "attn.qkv": "attn.c_attn",
    "attn.proj": "attn.c_proj",
    "mlp.fc": "mlp.c_fc",
    "mlp.proj": "mlp.c_proj",
}
_PREFIX = {"llama": "model.layers.{}.", "gpt2": "transformer.h.{}."}
PEFT_PREFIX = "base_model.model."


def _hf_family(model: nn.Module) -> str:
    """ "llama" (LLaMA / Qwen2 names), "gpt2", or "danlu" (no HF shape: adapters keep danlu's names)."""
    from danlu.models.gpt import GPT
    from danlu.models.hf_gpt import config_to_hf

    if not isinstance(model, GPT):
        return "danlu"
    try:
        model_type = config_to_hf(model.config)["model_type"]
    except DanluError:
        return "danlu"
    return "gpt2" if model_type == "gpt2" else "llama"


def _split_block(name: str) -> tuple[int, str]:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if not m:
        raise DanluError(
            f"LoRA layer {name!r} is outside the Transformer blocks; PEFT export knows blocks only"
        )
    return int(m.group(1)), m.group(2)


def adapter_modules(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module name in the export layout: (A (r, in), B (out, r), scaling)} for every LoRA part of `model`."""
    family = _hf_family(model)
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, layer in lora_layers(model).items():
        parts = {
            p: (layer.lora_A[p].detach(), layer.lora_B[p].detach(), layer.scaling[p]) for p in layer.rows
        }
        if family == "danlu":
            for p, abs_ in parts.items():
                out[name if p == ALL else f"{name}.{p}"] = abs_
            continue
        i, local = _split_block(name)
        prefix = _PREFIX[family].format(i)
        if family == "llama":
            if local.endswith("qkv"):  # fused in danlu, separate in HF: one adapter per q / k / v
                rows = _fused_rows(model.get_submodule(name.rsplit(".", 1)[0]))
                for p, (A, B, s) in parts.items():
                    if p == ALL:  # the same A for all three; each gets its own rows of B
                        for q in FUSED_PARTS:
                            out[prefix + _LLAMA[q]] = (A, B[rows[q][0] : rows[q][1]], s)
                    else:
                        out[prefix + _LLAMA[p]] = (A, B, s)
            else:
                A, B, s = parts[ALL]
                out[prefix + _LLAMA[local]] = (A, B, s)
        else:  # gpt2: every layer is one HF module; parts stack into one adapter of rank Σr
            hf = prefix + _GPT2[local]
            s0 = next(iter(parts.values()))[2]
            A = torch.cat([A for A, _, _ in parts.values()])  # (Σr, in)
            B = torch.zeros(layer.base.out_features, A.shape[0], dtype=A.dtype, device=A.device)  # (out, Σr)
            col = 0
            for p, (A_p, B_p, s) in parts.items():
                a, b = layer.rows[p]
                B[a:b, col : col + A_p.shape[0]] = B_p * (s / s0)  # fold a different scaling into B
                col += A_p.shape[0]
            out[hf] = (A, B, s0)
    return out


def save_adapter(model: nn.Module, path: str | Path, cfg: LoRAConfig | None = None,
                 base_model_name_or_path: str | None = None) -> Path:  # fmt: skip
    """Write the adapters alone in PEFT's layout: adapter_config.json + adapter_model.safetensors."""
    from safetensors.torch import save_file

    from danlu.fileio import atomic_dir

    modules = adapter_modules(model)
    if not modules:
        raise DanluError("the model has no LoRA layers to save; call apply_lora first")
    family = _hf_family(model)
    ranks = {n: A.shape[0] for n, (A, _, _) in modules.items()}
    base_r = cfg.r if cfg is not None else min(ranks.values())
    base_alpha = cfg.alpha if cfg is not None else base_r * next(iter(modules.values()))[2]
    rank_pattern, alpha_pattern = {}, {}
    for n, (A, _, s) in modules.items():  # PEFT's per-module overrides, keyed by a name suffix it matches
        if A.shape[0] != base_r or not math.isclose(s * A.shape[0], base_alpha, rel_tol=1e-6):
            rank_pattern[n], alpha_pattern[n] = int(A.shape[0]), float(s * A.shape[0])
    target_modules = sorted({n.rsplit(".", 1)[-1] if family != "danlu" else n for n in modules})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": base_r,
        "lora_alpha": base_alpha,
        "lora_dropout": cfg.dropout if cfg is not None else 0.0,
        "target_modules": target_modules,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": family == "gpt2",  # HF GPT-2 stores (in, out) Conv1D weights
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    tensors = {}
    for n, (A, B, _) in modules.items():
        tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"] = A.cpu().clone()
        tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"] = B.cpu().clone()
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return path


def _danlu_target(family: str, hf_module: str) -> tuple[str, str]:
    """(danlu Linear name, part) of an adapter module name in the export layout."""
    if family == "danlu":
        m = re.fullmatch(r"(.+\.qkv)\.([qkv])", hf_module)
        return (m.group(1), m.group(2)) if m else (hf_module, ALL)
    m = re.fullmatch(r"(?:model\.layers|transformer\.h)\.(\d+)\.(.+)", hf_module)
    table = _LLAMA if family == "llama" else _GPT2
    inverse = {v: k for k, v in table.items()}
    if not m or m.group(2) not in inverse:
        raise DanluError(f"adapter module {hf_module!r} has no danlu counterpart; known: {sorted(inverse)}")
    local = inverse[m.group(2)]
    block = f"blocks.{m.group(1)}."
    if local in FUSED_PARTS:
        return block + "attn.qkv", local
    return block + local, ALL


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():  # PEFT matches a pattern against the end of the module name
        if re.fullmatch(rf"(.*\.)?({key})", module):
            return value
    return default


def load_adapter(model: nn.Module, path: str | Path) -> LoRAConfig:
    """Attach the adapters saved at `path` (PEFT layout, from danlu or PEFT) to `model`, in place, trainable.

    Returns the LoRAConfig read from adapter_config.json."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise DanluError(f"{path} is not a LoRA adapter folder: {f.name} is missing")
    conf = json.loads(cfg_file.read_text())
    if conf.get("peft_type") != "LORA" or conf.get("use_dora"):
        raise DanluError(
            f"{cfg_file}: only plain LoRA adapters are supported, got peft_type={conf.get('peft_type')}"
        )
    tensors = load_file(str(weights))
    family = _hf_family(model)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(rf"{re.escape(PEFT_PREFIX)}(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if not m:
            raise DanluError(f"{weights}: unexpected tensor {key!r} (a LoRA adapter holds lora_A / lora_B)")
        by_module.setdefault(m.group(1), {})[m.group(2)] = t
    for p in model.parameters():
        p.requires_grad_(False)
    r0, alpha0 = conf["r"], conf["lora_alpha"]
    for hf_module, ab in sorted(by_module.items()):
        name, part = _danlu_target(family, hf_module)
        r = _pattern(conf.get("rank_pattern") or {}, hf_module, r0)
        alpha = _pattern(conf.get("alpha_pattern") or {}, hf_module, alpha0)
        scaling = alpha / (math.sqrt(r) if conf.get("use_rslora") else r)
        try:
            layer = model.get_submodule(name)
        except AttributeError as e:
            raise DanluError(f"adapter module {hf_module!r} -> {name!r}: the model has no such layer") from e
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer, conf.get("lora_dropout", 0.0))
            _set_module(model, name, layer)
        rows = (0, layer.base.out_features)
        if part != ALL:
            rows = _fused_rows(model.get_submodule(name.rsplit(".", 1)[0]))[part]
        A, B = ab["A"], ab["B"]
        if B.shape[0] != rows[1] - rows[0] or A.shape[1] != layer.base.in_features:
            raise DanluError(
                f"adapter {hf_module}: shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not fit {name}"
            )
        layer.add_part(part, rows, A.shape[0], scaling)
        with torch.no_grad():
            layer.lora_A[part].copy_(A)
            layer.lora_B[part].copy_(B)
    targets = sorted({hf.rsplit(".", 1)[-1] for hf in by_module})
    return LoRAConfig(r=r0, alpha=alpha0, dropout=conf.get("lora_dropout", 0.0), targets=targets)
