"""Runners for the vision models on the picture world (ViT classifier, CLIP, diffusion), and `stage_vision`.

Each runner builds its data from `danlu.data.pictures`, trains with the one loop (`danlu.train.loop.train`),
evaluates, and returns (model, summary). Batches are pure functions of (split, step, micro), as the loop wants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.data.pictures import (
    COLOURS,
    SHAPES,
    make_pictures,
    save_grid,
    to_tensor,
)
from danlu.data.pictures import (
    HELD_OUT_COMBOS as HELD_OUT,
)
from danlu.fileio import atomic_dir
from danlu.recipes.context import DemoContext
from danlu.train.loop import TrainConfig, train


@dataclass
class VisionOptions:
    image_size: int = 16
    n_train: int = 4000
    n_test: int = 400
    n_heldout: int = 400
    vit_steps: int = 600
    clip_steps: int = 2400  # held-out-combination shape accuracy 0.785 at 1200, 0.855 at 2400
    # Share of samples the ViT classifies as their shape: 0.64 at 1500 steps, 0.75-0.79 at 3000 (with the EMA).
    diffusion_steps: int = 3000
    diffusion_ema: float = 0.999  # decay of the weight average the sampler uses (0: sample the raw weights)
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    show_progress: bool = False


def _picture_batches(
    x: torch.Tensor,
    fields: dict[str, torch.Tensor],
    batch_size: int,
    seed: int,
    permute_colours: bool = False,
):
    """A batch_fn over in-memory tensors: random rows, a pure function of (split, step, micro).

    `permute_colours` shuffles the RGB channels of each picture (colour augmentation): a shape classifier then
    cannot lean on colour, which matters because the held-out colour-shape pairs make colour a partial shortcut.
    """

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(
            seed * 1_000_003 + step * 101 + micro + (7 if split == "val" else 0)
        )
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        pixels = x[idx]  # (B, 3, H, W)
        if permute_colours:
            perm = torch.argsort(torch.rand(batch_size, 3, generator=g), dim=1)  # (B, 3)
            pixels = torch.gather(pixels, 1, perm[:, :, None, None].expand_as(pixels))
        return {"pixel_values": pixels, **{k: v[idx] for k, v in fields.items()}}

    return batch_fn


def _cfg(steps: int, opts: VisionOptions, lr: float, batch_size: int | None = None) -> TrainConfig:
    return TrainConfig(
        max_steps=steps,
        batch_size=batch_size or opts.batch_size,
        lr=lr,
        warmup_steps=min(50, steps // 10),
        weight_decay=0.05,
        eval_interval=steps,
        eval_batches=2,
        device=opts.device,
        seed=opts.seed,
        show_progress=opts.show_progress,
    )


def _save_json(model: torch.nn.Module, d: Path) -> None:
    """Save weights (safetensors) and the config of a vision model."""
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2), encoding="utf-8")


def accuracy(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if len(target) else 0.0


def train_vit_classifier(
    out_dir: str | Path, opts: VisionOptions | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train a ViT to tell the shape kind; report accuracy on the test and the held-out-combination pictures."""
    from danlu.models.vit import ViT, ViTConfig

    opts = opts or VisionOptions()
    torch.manual_seed(opts.seed)
    tr = make_pictures(opts.n_train, "train", opts.seed, opts.image_size)
    te = make_pictures(opts.n_test, "test", opts.seed, opts.image_size)
    ho = make_pictures(opts.n_heldout, "heldout", opts.seed, opts.image_size)
    model = ViT(ViTConfig(image_size=opts.image_size, n_classes=len(SHAPES)))
    batch_fn = _picture_batches(
        to_tensor(tr.images), {"labels": torch.from_numpy(tr.shape)}, opts.batch_size, 1, True
    )
    summary = train(model, batch_fn, _cfg(opts.vit_steps, opts, 2e-3), Path(out_dir), save_fn=_save_json)
    model.cpu()
    test_acc = accuracy(model.predict(to_tensor(te.images)), te.shape)
    held_acc = accuracy(model.predict(to_tensor(ho.images)), ho.shape)
    return model, {
        "params": sum(p.numel() for p in model.parameters()),
        "steps": opts.vit_steps,
        "first_train_loss": summary.get("first_train_loss"),
        "final_train_loss": summary.get("final_train_loss"),
        "test_accuracy": test_acc,
        "heldout_accuracy": held_acc,
    }


# ------------------------------------------------------------------------------------------------ CLIP
SHAPE_TEMPLATES = ["a photo of a {label}", "a picture of a {label}", "an image of a {label}", "a {label}"]
COLOUR_TEMPLATES = [
    "a photo of a {label} shape",
    "a picture of a {label} thing",
    "an image of a {label} shape",
    "a {label} thing",
]
_PREFIXES = ["a photo of a", "a picture of a", "an image of a", "a"]


def caption_variant(rng: Any, size: str, colour: str, shape: str) -> str:
    """A training caption that names all or part of the picture, so short prompts ("a red shape", "a circle")
    are in the text distribution; the full caption is the most common."""
    prefix = rng.choice(_PREFIXES)
    u = rng.random()
    if u < 0.5:
        return f"{prefix} {size} {colour} {shape}"
    if u < 0.7:
        return f"{prefix} {colour} {shape}"
    if u < 0.85:
        return f"{prefix} {shape}"
    return f"{prefix} {colour} {rng.choice(['shape', 'thing'])}"


def train_caption_tokenizer(vocab_size: int = 400):
    """A small byte-level BPE over every caption the picture world can produce (English and Chinese)."""
    from danlu.data.pictures import SIZES, caption_zh
    from danlu.tokenizers.bpe import BPETokenizer

    texts = []
    for size in SIZES:
        for colour in COLOURS:
            for shape in SHAPES:
                for prefix in _PREFIXES:
                    texts += [
                        f"{prefix} {size} {colour} {shape}",
                        f"{prefix} {colour} shape",
                        f"{prefix} thing",
                    ]
                texts.append(caption_zh(size, colour, shape))
    return BPETokenizer.train(texts * 3, vocab_size, min_frequency=2)


def train_clip(
    out_dir: str | Path, opts: VisionOptions | None = None, steps: int | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Train CLIP on pictures and varied captions; report zero-shot shape/colour accuracy (test and held-out
    combinations) and retrieval recall@1/5. Returns (model, tokenizer, summary)."""
    import random

    from danlu.data.pictures import SIZES
    from danlu.models.clip import CLIP, CLIPConfig, tokenize_captions
    from danlu.models.vit import ViTConfig

    opts = opts or VisionOptions()
    steps = steps or opts.clip_steps
    torch.manual_seed(opts.seed)
    out_dir = Path(out_dir)
    tokenizer = train_caption_tokenizer()
    config = CLIPConfig(
        vision=ViTConfig(image_size=opts.image_size, n_classes=0), vocab_size=tokenizer.vocab_size
    )
    model = CLIP(config)
    tr = make_pictures(opts.n_train, "train", opts.seed, opts.image_size)
    x = to_tensor(tr.images)
    colour_names = list(COLOURS)
    cache: dict[str, list[int]] = {}
    B = 2 * opts.batch_size  # contrastive learning wants many negatives per batch

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{opts.seed}/{split}/{step}/{micro}")
        idx = [rng.randrange(len(tr)) for _ in range(B)]
        pixels = x[idx]  # (B, 3, H, W)
        # Copies with shuffled RGB channels, captioned by shape alone, teach the image encoder shape features
        # that do not lean on colour, the partial shortcut the held-out colour-shape pairs would reward.
        grey = torch.tensor([rng.random() < 0.5 for _ in idx])
        perm = torch.tensor([rng.sample(range(3), 3) for _ in idx])  # (B, 3)
        shuffled = torch.gather(pixels, 1, perm[:, :, None, None].expand_as(pixels))
        pixels = torch.where(grey[:, None, None, None], shuffled, pixels)
        texts = [
            f"{rng.choice(_PREFIXES)} {SIZES[tr.size[i]] + ' ' if rng.random() < 0.5 else ''}{SHAPES[tr.shape[i]]}"
            if g
            else caption_variant(rng, SIZES[tr.size[i]], colour_names[tr.colour[i]], SHAPES[tr.shape[i]])
            for i, g in zip(idx, grey.tolist(), strict=True)
        ]
        for t in texts:
            if t not in cache:
                cache[t] = tokenizer.encode(t)
        ids, mask = tokenize_captions(_Cached(cache), texts, config.block_size, config.pad_token_id)
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}

    cfg = _cfg(steps, opts, 1e-3, batch_size=B)
    cfg.block_size = config.block_size

    def save_fn(m: torch.nn.Module, d: Path) -> None:
        _save_json(m, d)  # the tokenizer belongs to the checkpoint: written with it, published with it
        tokenizer.save(d)

    summary = train(model, batch_fn, cfg, out_dir, save_fn=save_fn)
    model.cpu().eval()
    return (
        model,
        tokenizer,
        {
            "steps": steps,
            "first_train_loss": summary.get("first_train_loss"),
            "final_train_loss": summary.get("final_train_loss"),
            **evaluate_clip(model, tokenizer, opts),
        },
    )


class _Cached:
    """A tokenizer stand-in serving encodings already computed (the captions repeat)."""

    def __init__(self, cache: dict[str, list[int]]) -> None:
        self.cache = cache

    def encode(self, text: str) -> list[int]:
        return self.cache[text]


def evaluate_clip(model: Any, tokenizer: Any, opts: VisionOptions) -> dict[str, Any]:
    """Zero-shot accuracy (shape, colour) on the test pictures and the held-out combinations; retrieval recall."""
    from danlu.models.clip import retrieval_recall, tokenize_captions, zero_shot_classify

    result: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    for split, n in (("test", opts.n_test), ("heldout", opts.n_heldout)):
        pics = make_pictures(n, split, opts.seed, opts.image_size)
        x = to_tensor(pics.images)
        shape_pred = zero_shot_classify(model, tokenizer, x, SHAPES, SHAPE_TEMPLATES)
        colour_pred = zero_shot_classify(model, tokenizer, x, list(COLOURS), COLOUR_TEMPLATES)
        result[f"{split}_shape_accuracy"] = accuracy(shape_pred, pics.shape)
        result[f"{split}_colour_accuracy"] = accuracy(colour_pred, pics.colour)
        with torch.no_grad():
            ids, mask = tokenize_captions(tokenizer, pics.captions_en[:200], model.config.block_size)
            groups = torch.tensor([hash(c) for c in pics.captions_en[:200]])
            recall = retrieval_recall(
                model.encode_image(x[:200]), model.encode_text(ids, mask), groups=groups
            )
        result.update({f"{split}_{k}": v for k, v in recall.items()})
    return result


# ------------------------------------------------------------------------------------------------ diffusion
def train_diffusion(
    out_dir: str | Path, opts: VisionOptions | None = None, steps: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train the conditional DDPM (shape + colour, classifier-free guidance) on the training pictures.

    Returns the exponential moving average of the weights (decay `opts.diffusion_ema`), as DDPM does (Ho et al.
    2020, appendix B): the raw weights of a short run still jitter from step to step, and their average draws
    cleaner samples. `ema/` holds the average; `checkpoint/` keeps the raw weights and optimizer state."""
    import copy

    from danlu.models.diffusion import Diffusion, DiffusionConfig

    opts = opts or VisionOptions()
    steps = steps or opts.diffusion_steps
    torch.manual_seed(opts.seed)
    tr = make_pictures(opts.n_train, "train", opts.seed, opts.image_size)
    model = Diffusion(
        DiffusionConfig(image_size=opts.image_size, n_shapes=len(SHAPES), n_colours=len(COLOURS))
    )
    fields = {"shape": torch.from_numpy(tr.shape), "colour": torch.from_numpy(tr.colour)}
    batch_fn = _picture_batches(to_tensor(tr.images), fields, opts.batch_size, 3)
    cfg = _cfg(steps, opts, 2e-3)
    cfg.weight_decay = 0.0
    ema = copy.deepcopy(model).requires_grad_(False)

    def update_ema(step: int, _: dict[str, float]) -> None:
        # Warm-up (1 + n) / (10 + n) keeps the early average from remembering the random initialisation.
        decay = min(opts.diffusion_ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p.detach().to(e.device), 1 - decay)

    summary = train(model, batch_fn, cfg, Path(out_dir), save_fn=_save_json, on_step=update_ema)
    ema.cpu().eval()
    with atomic_dir(Path(out_dir) / "ema") as d:
        _save_json(ema, d)
    return ema, {
        "params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "ema_decay": opts.diffusion_ema,
        "final_train_loss": summary.get("final_train_loss"),
    }


def diffusion_shape_accuracy(
    diffusion: Any,
    classifier: Any,
    n_per_shape: int = 25,
    guidance: float = 2.0,
    seed: int = 0,
    **sample_kw: Any,
) -> tuple[float, np.ndarray]:
    """Sample n_per_shape images per shape (colour left free: the null colour) and return the share the ViT
    classifier assigns to the conditioning shape, and the samples (uint8, shape-major)."""
    from danlu.data.pictures import to_uint8

    g = torch.Generator().manual_seed(seed)
    shape = torch.arange(len(SHAPES)).repeat_interleave(n_per_shape)
    colour = torch.full_like(shape, len(COLOURS))  # the null colour: any
    x = diffusion.sample(shape, colour, guidance=guidance, generator=g, **sample_kw)
    pred = classifier.predict(x.cpu())
    return accuracy(pred, shape), to_uint8(x)


# ------------------------------------------------------------------------------------------------ demo stage
def run_vision(
    out_dir: str | Path, opts: VisionOptions, say: Any = print
) -> tuple[dict[str, Any], list[str]]:
    """ViT -> CLIP -> diffusion on the picture world; returns (metrics, report lines). Grids go to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    save_grid(make_pictures(32, "train", opts.seed, opts.image_size).images, out_dir / "pictures.png", ncol=8)
    say("vision: ViT classifier")
    vit, v = train_vit_classifier(out_dir / "vit", opts)
    metrics["vit"] = v
    say("vision: CLIP")
    _, _, c = train_clip(out_dir / "clip", opts)
    metrics["clip"] = c
    say("vision: diffusion")
    diff, d = train_diffusion(out_dir / "diffusion", opts)
    d["shape_accuracy_by_vit"], samples = diffusion_shape_accuracy(diff, vit, 25, seed=opts.seed)
    pick = np.concatenate([samples[i * 25 : i * 25 + 8] for i in range(len(SHAPES))])
    save_grid(pick, out_dir / "samples.png", ncol=8)
    metrics["diffusion"] = d
    lines = [
        "## Vision (ViT, CLIP, diffusion on the picture world)\n",
        f"{opts.image_size}x{opts.image_size} pictures of {', '.join(SHAPES)} in {', '.join(COLOURS)}; "
        f"{len(HELD_OUT)} colour-shape pairs ({', '.join(f'{a} {b}' for a, b in HELD_OUT)}) never appear in training "
        "(the *held-out* split).\n",
        "![pictures](vision/pictures.png)\n",
        f"**ViT** ({v['params'] / 1e6:.2f} M parameters, {v['steps']} steps): shape accuracy "
        f"{v['test_accuracy']:.1%} on test pictures, **{v['heldout_accuracy']:.1%} on held-out pairs**.\n",
        f"**CLIP** ({c['params'] / 1e6:.2f} M parameters, {c['steps']} steps), zero-shot with prompt templates:\n",
        "| split | shape | colour | image→text R@1 | R@5 | text→image R@1 | R@5 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split in ("test", "heldout"):
        lines.append(
            f"| {split} | {c[f'{split}_shape_accuracy']:.1%} | {c[f'{split}_colour_accuracy']:.1%} | "
            f"{c[f'{split}_image_to_text_recall@1']:.1%} | {c[f'{split}_image_to_text_recall@5']:.1%} | "
            f"{c[f'{split}_text_to_image_recall@1']:.1%} | {c[f'{split}_text_to_image_recall@5']:.1%} |"
        )
    lines += [
        "",
        f"**Diffusion** (DDPM, {d['params'] / 1e6:.2f} M-parameter U-Net, {d['steps']} steps, DDIM sampling, "
        f"classifier-free guidance 2): samples conditioned on a shape are classified as that shape by the ViT "
        f"**{d['shape_accuracy_by_vit']:.1%}** of the time. Rows: {', '.join(SHAPES)}.\n",
        "![diffusion samples](vision/samples.png)\n",
    ]
    return metrics, lines


def stage_vision(ctx: DemoContext) -> dict[str, Any]:
    """`danlu demo` stage: ViT, CLIP and diffusion on the picture world; writes ctx.out / "vision"."""
    a = ctx.args
    opts = VisionOptions(device=getattr(a, "device", "cpu"), seed=a.seed, show_progress=not a.quiet)
    metrics, lines = run_vision(ctx.out / "vision", opts, ctx.say)
    ctx.sections.append("\n".join(lines))
    return {
        "vit_heldout_accuracy": metrics["vit"]["heldout_accuracy"],
        "vit_test_accuracy": metrics["vit"]["test_accuracy"],
        **{f"clip_{k}": v for k, v in metrics["clip"].items() if k != "params"},
        "diffusion_shape_accuracy": metrics["diffusion"]["shape_accuracy_by_vit"],
    }
