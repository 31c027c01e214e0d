"""`danlu vit train|predict`, `danlu clip train|predict`, `danlu diffusion train|sample`: the vision models on
the picture world (predict reads PNG/JPEG files or .npy arrays, e.g. cells of a `diffusion sample` grid)."""

from __future__ import annotations

import argparse
import json
import math


def _common(p: argparse.ArgumentParser, steps: int) -> None:
    """Shared training flags; `steps` repeats VisionOptions' default (literal here so `danlu --help` needs no torch;
    tests/vision checks the two agree)."""
    from danlu.cli.train import add_overwrite_arg

    p.add_argument("--out", required=True, help="output folder: checkpoint/, metrics.jsonl, loss.png")
    add_overwrite_arg(p)
    p.add_argument("--max-steps", dest="steps", type=int, default=steps, help="optimizer steps to train")
    p.add_argument("--batch-size", type=int, default=64, help="pictures per step")
    p.add_argument("--image-size", type=int, default=16, help="picture side in pixels")
    p.add_argument("--n-train", type=int, default=4000, help="training pictures")
    p.add_argument("--seed", type=int, default=0, help="random seed (the pictures and the model)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_train(args: argparse.Namespace) -> None:
    from danlu.errors import DanluError

    if args.steps <= 0 or args.batch_size <= 0 or args.n_train <= 0 or args.image_size <= 0:
        raise DanluError(
            "--max-steps, --batch-size, --n-train and --image-size must be positive, got "
            f"{args.steps}, {args.batch_size}, {args.n_train}, {args.image_size}"
        )


def _predict_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--model", required=True, help=f"the {what} checkpoint folder (OUT/checkpoint of train)")
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="PNG/JPEG files, or .npy uint8 arrays (H, W, 3)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per image")


def register(sub) -> None:
    from danlu.flags import heavy

    v = sub.add_parser(
        "vit", help="Vision Transformer: train a shape classifier on the picture world, predict"
    )
    v2 = v.add_subparsers(dest="vit_command", metavar="SUBCOMMAND", required=True)
    t = v2.add_parser("train", help="train a ViT shape classifier, report test / held-out accuracy")
    _common(t, 600)
    heavy(t, run_vit_train, validate=_check_train)
    pv = v2.add_parser("predict", help="the shape a trained ViT sees in each image, with its probability")
    _predict_args(pv, "ViT")
    pv.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="class names in the model's order (none: the picture world's shapes)",
    )
    heavy(pv, run_vit_predict, validate=_check_predict)

    c = sub.add_parser(
        "clip", help="CLIP: contrastive image-text training on the picture world, zero-shot predict"
    )
    c2 = c.add_subparsers(dest="clip_command", metavar="SUBCOMMAND", required=True)
    t = c2.add_parser("train", help="train CLIP, report zero-shot accuracy and retrieval recall")
    _common(t, 2400)
    heavy(t, run_clip_train, validate=_check_train)
    pc = c2.add_parser("predict", help="zero-shot: the label whose caption best matches each image")
    _predict_args(pc, "CLIP")
    pc.add_argument(
        "--labels", nargs="+", default=None, help="candidate labels (none: the picture world's shapes)"
    )
    pc.add_argument(
        "--template",
        nargs="+",
        default=None,
        help="caption templates with {label}, averaged (none: the ones CLIP was evaluated with)",
    )
    heavy(pc, run_clip_predict, validate=_check_predict)

    d = sub.add_parser("diffusion", help="DDPM with a small U-Net: train, sample PNG grids")
    d2 = d.add_subparsers(dest="diffusion_command", metavar="SUBCOMMAND", required=True)
    t = d2.add_parser("train", help="train a shape- and colour-conditioned diffusion model")
    _common(t, 3000)
    heavy(t, run_diffusion_train, validate=_check_train)
    s = d2.add_parser("sample", help='sample a PNG grid for a prompt such as "a red circle"')
    s.add_argument(
        "--model",
        required=True,
        help="model folder: OUT/ema of `diffusion train` (the averaged weights; OUT/checkpoint works too)",
    )
    s.add_argument("--prompt", required=True, help='names a shape and/or colour: "a red circle", "红色圆形"')
    s.add_argument("--samples", dest="n", type=int, default=16, help="pictures in the grid")
    s.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (>= 0)")
    s.add_argument("--method", choices=["ddim", "ddpm"], default="ddim", help="sampler")
    s.add_argument("--ddim-steps", type=int, default=50, help="denoising steps of the DDIM sampler")
    s.add_argument("--out", default="samples.png", help="PNG file to write")
    s.add_argument("--seed", type=int, default=0, help="random seed of the noise")
    heavy(s, run_diffusion_sample, device=False)


def _check_predict(args: argparse.Namespace) -> None:
    from danlu.cli.train import check_paths

    check_paths(args.model, what="model")
    check_paths(*args.images, what="image")


def _opts(args: argparse.Namespace, **steps):
    from danlu.cli.train import RUN_OUTPUTS, check_out
    from danlu.recipes.vision import VisionOptions

    check_out(args, (*RUN_OUTPUTS, "ema"))  # before any picture is drawn: never write over an earlier run
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
    from danlu.recipes.vision import train_vit_classifier

    _, summary = train_vit_classifier(args.out, _opts(args, vit_steps=args.steps))
    print(json.dumps(summary, indent=2))
    return 0


def run_clip_train(args: argparse.Namespace) -> int:
    from danlu.recipes.vision import train_clip

    _, _, summary = train_clip(args.out, _opts(args, clip_steps=args.steps))
    print(json.dumps(summary, indent=2))
    return 0


def run_diffusion_train(args: argparse.Namespace) -> int:
    from danlu.recipes.vision import train_diffusion

    _, summary = train_diffusion(args.out, _opts(args, diffusion_steps=args.steps))
    print(json.dumps(summary, indent=2))
    print(f'sample with: danlu diffusion sample --model {args.out}/ema --prompt "a red circle"')
    return 0


def load_diffusion(path: str):
    """A Diffusion model from a checkpoint folder written by `danlu diffusion train`."""
    from pathlib import Path

    from danlu.errors import DanluError
    from danlu.models.diffusion import Diffusion, DiffusionConfig

    d = Path(path)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise DanluError(f"{path} is not a diffusion checkpoint (needs config.json and model.safetensors)")
    from danlu.models.checkpoints import read_config, read_safetensors
    from danlu.models.config_checks import config_from_dict
    from danlu.models.weights import check_finite

    try:
        cfg = config_from_dict(DiffusionConfig, read_config(d), "diffusion config")
    except DanluError as e:
        raise DanluError(f"{d / 'config.json'}: {e}") from e
    model = Diffusion(cfg)  # (its noise schedule is a buffer the weights file does not hold)
    tensors = read_safetensors(d)
    check_finite(tensors, str(d))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise DanluError(f"{d}: the weights do not fit its config.json ({str(e)[:300]})") from e
    return model.eval()


def run_diffusion_sample(args: argparse.Namespace) -> int:
    import torch

    from danlu.data.pictures import parse_prompt, save_grid, to_uint8
    from danlu.errors import DanluError

    if args.n <= 0:
        raise DanluError(f"--samples must be positive, got {args.n}")
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


# ------------------------------------------------------------------------------------------------ predict
MAX_IMAGE_PIXELS = 4096 * 4096  # a bigger file is refused before it is decoded (untrusted input)


def read_image(path: str, image_size: int):
    """One picture as uint8 (image_size, image_size, 3): a PNG/JPEG (Pillow) or a .npy uint8 array (H, W, 3),
    resized to the size the model was trained on."""
    from pathlib import Path

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from danlu.errors import DanluError

    if Path(path).suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")  # never unpickle a stranger's file
        except (OSError, ValueError) as e:
            raise DanluError(f"{path}: not a NumPy array file ({e})") from None
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise DanluError(f"{path}: want a uint8 array (H, W, 3), got {array.dtype} {tuple(array.shape)}")
        if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
            raise DanluError(
                f"{path}: {array.shape[0]}x{array.shape[1]} is too large (limit {MAX_IMAGE_PIXELS:,} pixels)"
            )
        image = Image.fromarray(np.ascontiguousarray(array))
    else:
        try:
            image = Image.open(path)
        except (OSError, UnidentifiedImageError) as e:
            raise DanluError(f"{path}: not an image Pillow can read ({e})") from None
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise DanluError(
                f"{path}: {image.width}x{image.height} is too large (limit {MAX_IMAGE_PIXELS:,} pixels)"
            )
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_vision(path: str, kind: str, device: str):
    """A ViT or CLIP from a folder written by `danlu vit|clip train` (config.json + model.safetensors)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from danlu.errors import DanluError

    d = Path(path)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise DanluError(f"{path} is not a {kind} checkpoint (needs config.json and model.safetensors)")
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DanluError(f"{d / 'config.json'}: not valid JSON ({e})") from None
    if kind == "ViT":
        from danlu.models.vit import ViT as Model
        from danlu.models.vit import ViTConfig as Config
    else:
        from danlu.models.clip import CLIP as Model
        from danlu.models.clip import CLIPConfig as Config
    if not isinstance(config, dict) or ("vision" in config) != (kind == "CLIP"):
        raise DanluError(f"{path} does not hold a {kind} (its config.json is another model's)")
    try:
        model = Model(Config(**config))
        model.load_state_dict(load_file(str(d / "model.safetensors")))
    except (TypeError, ValueError, RuntimeError) as e:
        raise DanluError(
            f"{path}: config and weights do not make a {kind} ({str(e).splitlines()[0]})"
        ) from None
    return model.to(device).eval()


def _images(args: argparse.Namespace, image_size: int):
    import numpy as np

    from danlu.data.pictures import to_tensor

    return to_tensor(np.stack([read_image(p, image_size) for p in args.images]))  # (N, 3, H, W)


def _print_predictions(args: argparse.Namespace, labels: list[str], probs) -> None:
    for path, row in zip(args.images, probs.tolist(), strict=True):
        best = max(range(len(labels)), key=row.__getitem__)
        if args.json:
            scores = {label: round(p, 4) for label, p in zip(labels, row, strict=True)}
            print(
                json.dumps(
                    {"image": path, "label": labels[best], "probabilities": scores}, ensure_ascii=False
                )
            )
        else:
            print(f"{path}\t{labels[best]}\t{row[best]:.3f}")


def run_vit_predict(args: argparse.Namespace) -> int:
    import torch

    from danlu.data.pictures import SHAPES
    from danlu.errors import DanluError

    model = load_vision(args.model, "ViT", args.device)
    labels = list(args.labels or SHAPES)
    if len(labels) != model.config.n_classes:
        raise DanluError(
            f"{args.model} tells {model.config.n_classes} classes but {len(labels)} labels were given; "
            "pass --labels with one name per class, in training order"
        )
    x = _images(args, model.config.image_size).to(args.device)
    with torch.no_grad():
        probs = model(x).logits.float().softmax(-1).cpu()  # (N, n_classes)
    _print_predictions(args, labels, probs)
    return 0


def run_clip_predict(args: argparse.Namespace) -> int:
    import torch

    from danlu.data.pictures import SHAPES
    from danlu.models.clip import class_embeddings
    from danlu.recipes.vision import SHAPE_TEMPLATES
    from danlu.tokenizers.base import Tokenizer

    model = load_vision(args.model, "CLIP", args.device)
    tokenizer = Tokenizer.load(args.model)
    labels = list(args.labels or SHAPES)
    classes = class_embeddings(model, tokenizer, labels, args.template or SHAPE_TEMPLATES)  # (n_labels, D)
    x = _images(args, model.config.vision.image_size).to(args.device)
    with torch.no_grad():
        scale = model.logit_scale.clamp(max=math.log(100)).exp()
        probs = (scale * model.encode_image(x) @ classes.T).float().softmax(-1).cpu()  # (N, n_labels)
    _print_predictions(args, labels, probs)
    return 0
