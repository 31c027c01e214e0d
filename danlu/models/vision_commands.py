"""`danlu vit train`, `danlu clip train`, `danlu diffusion train|sample`: the vision models on the picture world."""

from __future__ import annotations

import argparse
import json


def _common(p: argparse.ArgumentParser, steps: int) -> None:
    """Shared training flags; `steps` repeats VisionOptions' default (literal here so `danlu --help` needs no torch;
    tests/vision checks the two agree)."""
    from danlu.train.commands import add_overwrite_arg

    p.add_argument("--out", required=True, help="output folder: checkpoint/, metrics.jsonl, loss.png")
    add_overwrite_arg(p)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=4000, help="training pictures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def register(sub) -> None:
    v = sub.add_parser("vit", help="Vision Transformer: train a shape classifier on the picture world")
    v2 = v.add_subparsers(dest="vit_command", metavar="{train}", required=True)
    t = v2.add_parser("train", help="train a ViT shape classifier, report test / held-out accuracy")
    _common(t, 600)
    t.set_defaults(func=run_vit_train)

    c = sub.add_parser("clip", help="CLIP: contrastive image-text training on the picture world")
    c2 = c.add_subparsers(dest="clip_command", metavar="{train}", required=True)
    t = c2.add_parser("train", help="train CLIP, report zero-shot accuracy and retrieval recall")
    _common(t, 2400)
    t.set_defaults(func=run_clip_train)

    d = sub.add_parser("diffusion", help="DDPM with a small U-Net: train, sample PNG grids")
    d2 = d.add_subparsers(dest="diffusion_command", metavar="{train,sample}", required=True)
    t = d2.add_parser("train", help="train a shape- and colour-conditioned diffusion model")
    _common(t, 3000)
    t.set_defaults(func=run_diffusion_train)
    s = d2.add_parser("sample", help='sample a PNG grid for a prompt such as "a red circle"')
    s.add_argument(
        "--model",
        required=True,
        help="model folder: OUT/ema of `diffusion train` (the averaged weights; OUT/checkpoint works too)",
    )
    s.add_argument("--prompt", required=True, help='names a shape and/or colour: "a red circle", "红色圆形"')
    s.add_argument("--n", type=int, default=16, help="pictures in the grid")
    s.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (>= 0)")
    s.add_argument("--method", choices=["ddim", "ddpm"], default="ddim")
    s.add_argument("--ddim-steps", type=int, default=50)
    s.add_argument("--out", default="samples.png", help="PNG file to write")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_diffusion_sample)


def _opts(args: argparse.Namespace, **steps):
    from danlu.errors import DanluError
    from danlu.train.commands import RUN_OUTPUTS, check_out
    from danlu.train.vision import VisionOptions

    if args.steps <= 0 or args.batch_size <= 0 or args.n_train <= 0:
        raise DanluError(
            f"--steps, --batch-size and --n-train must be positive, got {args.steps}, {args.batch_size}, {args.n_train}"
        )
    check_out(args, (*RUN_OUTPUTS, "ema"))
    return VisionOptions(
        image_size=args.image_size,
        n_train=args.n_train,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        show_progress=not args.quiet,
        **steps,
    )


def run_vit_train(args: argparse.Namespace) -> int:
    from danlu.train.vision import train_vit_classifier

    _, summary = train_vit_classifier(args.out, _opts(args, vit_steps=args.steps))
    print(json.dumps(summary, indent=2))
    return 0


def run_clip_train(args: argparse.Namespace) -> int:
    from danlu.train.vision import train_clip

    _, _, summary = train_clip(args.out, _opts(args, clip_steps=args.steps))
    print(json.dumps(summary, indent=2))
    return 0


def run_diffusion_train(args: argparse.Namespace) -> int:
    from danlu.train.vision import train_diffusion

    _, summary = train_diffusion(args.out, _opts(args, diffusion_steps=args.steps))
    print(json.dumps(summary, indent=2))
    print(f'sample with: danlu diffusion sample --model {args.out}/ema --prompt "a red circle"')
    return 0


def load_diffusion(path: str):
    """A Diffusion model from a checkpoint folder written by `danlu diffusion train`."""
    from pathlib import Path

    from safetensors.torch import load_file

    from danlu.errors import DanluError
    from danlu.models.diffusion import Diffusion, DiffusionConfig

    d = Path(path)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise DanluError(f"{path} is not a diffusion checkpoint (needs config.json and model.safetensors)")
    model = Diffusion(DiffusionConfig(**json.loads((d / "config.json").read_text(encoding="utf-8"))))
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.eval()


def run_diffusion_sample(args: argparse.Namespace) -> int:
    import torch

    from danlu.data.pictures import save_grid, to_uint8
    from danlu.errors import DanluError
    from danlu.models.diffusion import parse_prompt

    if args.n <= 0:
        raise DanluError(f"--n must be positive, got {args.n}")
    shape, colour = parse_prompt(args.prompt)
    model = load_diffusion(args.model)
    cfg = model.config
    shapes = torch.full((args.n,), cfg.n_shapes if shape is None else shape, dtype=torch.long)
    colours = torch.full((args.n,), cfg.n_colours if colour is None else colour, dtype=torch.long)
    g = torch.Generator().manual_seed(args.seed)
    x = model.sample(shapes, colours, args.guidance, args.method, args.ddim_steps, generator=g)
    save_grid(to_uint8(x), args.out, ncol=min(8, args.n))
    print(f"wrote {args.n} samples for {args.prompt!r} to {args.out}")
    return 0
