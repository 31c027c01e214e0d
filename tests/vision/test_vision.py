"""Vision: the picture world, ViT, CLIP (InfoNCE parity, zero-shot, retrieval) and diffusion (q(x_t|x_0), sampling)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from danlu.data.pictures import (
    COLOURS,
    HELD_OUT_COMBOS,
    SHAPES,
    make_pictures,
    parse_prompt,
    save_grid,
    to_tensor,
    to_uint8,
)
from danlu.errors import DanluError
from danlu.models.clip import CLIP, CLIPConfig, clip_loss, retrieval_recall, zero_shot_classify
from danlu.models.diffusion import Diffusion, DiffusionConfig, linear_schedule, q_sample
from danlu.models.vit import ViT, ViTConfig


# ------------------------------------------------------------------------------------------- picture world
def test_pictures_are_deterministic_and_captioned():
    a, b = make_pictures(20, "train", seed=3), make_pictures(20, "train", seed=3)
    assert np.array_equal(a.images, b.images) and a.captions_en == b.captions_en
    assert a.images.shape == (20, 16, 16, 3) and a.images.dtype == np.uint8
    c = make_pictures(20, "train", seed=4)
    assert not np.array_equal(a.images, c.images)
    i = 0
    assert a.captions_en[i].startswith("a photo of a ") and SHAPES[a.shape[i]] in a.captions_en[i]
    assert a.captions_zh[i].startswith("一张") and a.captions_zh[i].endswith("的照片")


def test_held_out_combinations_only_in_heldout_split():
    colours = list(COLOURS)
    tr, ho = make_pictures(300, "train"), make_pictures(100, "heldout")
    seen = {(colours[c], SHAPES[s]) for c, s in zip(tr.colour, tr.shape, strict=True)}
    assert not seen & set(HELD_OUT_COMBOS)
    assert {(colours[c], SHAPES[s]) for c, s in zip(ho.colour, ho.shape, strict=True)} <= set(HELD_OUT_COMBOS)
    # Every shape and every colour still appears in training.
    assert {s for _, s in seen} == set(SHAPES) and {c for c, _ in seen} == set(COLOURS)


def test_picture_tensor_round_trip_and_grid(tmp_path):
    pics = make_pictures(5, "test")
    x = to_tensor(pics.images)
    assert x.shape == (5, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), pics.images)
    save_grid(pics.images, tmp_path / "g.png", ncol=3)
    assert (tmp_path / "g.png").stat().st_size > 0


def test_picture_bad_split():
    with pytest.raises(DanluError, match="split"):
        make_pictures(3, "validation")


# ------------------------------------------------------------------------------------------- ViT
def test_vit_shapes_and_loss():
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=16, patch_size=4, n_embd=32, n_layer=1, n_head=2, n_classes=4))
    x = torch.randn(3, 3, 16, 16)
    out = model(x, labels=torch.tensor([0, 1, 2]))
    assert out.logits.shape == (3, 4) and out.pooled.shape == (3, 32)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 1, 2])))
    assert model.encode(x).shape == (3, 17, 32)  # 16 patches + [CLS]


def test_vit_patch_embedding_is_a_linear_map_of_each_patch():
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=8, patch_size=4, n_embd=16, n_layer=1, n_head=2))
    x = torch.randn(1, 3, 8, 8)
    conv = model.patch_embed(x).flatten(2).transpose(1, 2)  # (1, 4, 16)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, 3, 2, 2, 4, 4)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 4, 48)  # (1, N, 3·P·P)
    manual = patches @ model.patch_embed.weight.reshape(16, 48).T + model.patch_embed.bias
    assert torch.allclose(conv, manual, atol=1e-5)


def test_vit_rejects_indivisible_image_size():
    with pytest.raises(DanluError, match="not divisible by patch_size"):
        ViTConfig(image_size=16, patch_size=5)


def test_vit_learns_shapes_quickly(tmp_path):
    from danlu.recipes.vision import VisionOptions, train_vit_classifier

    opts = VisionOptions(n_train=100, n_test=20, n_heldout=20, vit_steps=25, batch_size=16)
    _, s = train_vit_classifier(tmp_path, opts)
    # The full run in `danlu demo --stages vision` reaches >= 0.9 accuracy; here only the path and progress.
    assert s["final_train_loss"] < s["first_train_loss"] and 0 <= s["test_accuracy"] <= 1
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------- CLIP
def test_infonce_matches_independent_computation():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(6, 8), dim=-1)
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    t = torch.tensor(math.log(1 / 0.07))
    ours = clip_loss(img, txt, t)
    # Independent: per-row log-softmax written out in numpy, both directions averaged.
    s = (img @ txt.T).double().numpy() / 0.07
    i2t = -np.mean([s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(6)])
    t2i = -np.mean([s[j, j] - np.log(np.exp(s[:, j]).sum()) for j in range(6)])
    assert ours.item() == pytest.approx((i2t + t2i) / 2, rel=1e-5)


def test_infonce_is_low_for_aligned_pairs():
    e = F.normalize(torch.eye(4), dim=-1)
    assert clip_loss(e, e, torch.tensor(math.log(100))) < 1e-3
    assert clip_loss(e, e.roll(1, 0), torch.tensor(math.log(100))) > 10


@functools.cache
def _tokenizer():
    from danlu.recipes.vision import train_caption_tokenizer

    return train_caption_tokenizer(vocab_size=300)


def _tiny_clip():
    tok = _tokenizer()
    vision = ViTConfig(image_size=16, patch_size=4, n_embd=32, n_layer=1, n_head=2, n_classes=0)
    cfg = CLIPConfig(vision=vision, vocab_size=tok.vocab_size, text_embd=32, text_layer=1, embed_dim=16)
    return CLIP(cfg), tok


def test_clip_forward_and_zero_shot_shapes():
    from danlu.models.clip import tokenize_captions

    torch.manual_seed(0)
    model, tok = _tiny_clip()
    pics = make_pictures(4, "test")
    ids, mask = tokenize_captions(tok, pics.captions_en, model.config.block_size)
    out = model(to_tensor(pics.images), ids, mask)
    assert out.logits_per_image.shape == (4, 4) and out.loss.item() > 0
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    pred = zero_shot_classify(model, tok, to_tensor(pics.images), SHAPES)
    assert pred.shape == (4,) and int(pred.max()) < len(SHAPES)


def test_zero_shot_rejects_empty_labels():
    model, tok = _tiny_clip()
    with pytest.raises(DanluError, match="label list is empty"):
        zero_shot_classify(model, tok, torch.zeros(1, 3, 16, 16), [])


def test_retrieval_recall():
    e = torch.eye(5)
    perfect = retrieval_recall(e, e, ks=(1, 5))
    assert perfect["image_to_text_recall@1"] == 1.0 and perfect["text_to_image_recall@1"] == 1.0
    shifted = retrieval_recall(e, e.roll(1, 0), ks=(1, 5))
    assert shifted["image_to_text_recall@1"] == 0.0 and shifted["image_to_text_recall@5"] == 1.0
    # Same-caption groups: the partner's twin counts as a hit.
    grouped = retrieval_recall(e, e.roll(1, 0), ks=(1,), groups=torch.zeros(5, dtype=torch.long))
    assert grouped["image_to_text_recall@1"] == 1.0


def test_clip_training_lowers_the_loss(tmp_path):
    from danlu.recipes.vision import VisionOptions, train_clip

    opts = VisionOptions(n_train=60, n_test=10, n_heldout=10, batch_size=8)
    model, tok, s = train_clip(tmp_path, opts, steps=15)
    assert s["final_train_loss"] < s["first_train_loss"]
    assert 0 <= s["heldout_shape_accuracy"] <= 1 and "test_image_to_text_recall@5" in s


# ------------------------------------------------------------------------------------------- diffusion
def test_q_sample_matches_closed_form():
    n = 100
    sched = linear_schedule(n, 1e-4, 0.02)
    # ᾱ_t is the product of (1 - β_s), s <= t.
    betas = np.linspace(1e-4, 0.02, n)
    assert np.allclose(sched["alpha_bars"].numpy(), np.cumprod(1 - betas), rtol=1e-5)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 50, 99])
    xt = q_sample(x0, t, noise, sched["alpha_bars"])
    for i, ti in enumerate(t.tolist()):
        ab = float(np.prod(1 - betas[: ti + 1]))
        assert torch.allclose(xt[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i], atol=1e-5)
    # Statistically: many draws at one t have mean √ᾱ x0 and variance 1 - ᾱ.
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    tt = torch.full((20000,), 50)
    draws = q_sample(x0, tt, torch.randn_like(x0), sched["alpha_bars"])
    ab = float(np.prod(1 - betas[:51]))
    assert draws.mean().item() == pytest.approx(math.sqrt(ab) * 0.5, abs=0.02)
    assert draws.var().item() == pytest.approx(1 - ab, abs=0.02)


def _tiny_diffusion():
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(image_size=8, base=16, n_steps=20))


def test_diffusion_loss_and_sampling():
    model = _tiny_diffusion()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    out = model(x, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert out.noise_pred.shape == x.shape and out.loss.item() > 0
    shape, colour = torch.tensor([0, 1]), torch.tensor([5, 2])  # 5 = "any colour"
    for method in ("ddpm", "ddim"):
        s = model.sample(
            shape, colour, guidance=2.0, method=method, ddim_steps=5, generator=torch.Generator()
        )
        assert s.shape == (2, 3, 8, 8) and s.abs().max() <= 1 and torch.isfinite(s).all()


def test_guidance_one_is_the_conditional_prediction():
    model = _tiny_diffusion().eval()
    x, shape, colour = torch.randn(2, 3, 8, 8), torch.tensor([0, 3]), torch.tensor([1, 4])
    guided = model.guided_noise(x, 7, shape, colour, 1.0)
    direct = model.unet(x, torch.full((2,), 7), shape, colour)
    assert torch.allclose(guided, direct, atol=1e-5)


def test_diffusion_training_keeps_a_weight_average(tmp_path):
    from danlu.cli.vision import load_diffusion
    from danlu.recipes.vision import VisionOptions, train_diffusion

    opts = VisionOptions(n_train=40, batch_size=8, diffusion_ema=0.5)
    ema, s = train_diffusion(tmp_path, opts, steps=4)
    raw = load_diffusion(str(tmp_path / "checkpoint"))
    saved = load_diffusion(str(tmp_path / "ema"))
    for (name, e), e2 in zip(ema.named_parameters(), saved.parameters(), strict=True):
        assert torch.equal(e, e2), name  # ema/ holds the returned average
    # The average lags the raw weights: after 4 optimizer steps the two differ.
    assert any(not torch.equal(e, r) for e, r in zip(ema.parameters(), raw.parameters(), strict=True))
    assert s["ema_decay"] == 0.5 and s["steps"] == 4


def test_vision_cli_step_defaults_match_the_options():
    from danlu.cli import build_parser
    from danlu.recipes.vision import VisionOptions

    p = build_parser()
    for cmd, field in (("vit", "vit_steps"), ("clip", "clip_steps"), ("diffusion", "diffusion_steps")):
        args = p.parse_args([cmd, "train", "--out", "x"])
        assert args.steps == getattr(VisionOptions, field), cmd


def test_diffusion_rejects_negative_guidance():
    with pytest.raises(DanluError, match="guidance scale must be >= 0"):
        _tiny_diffusion().sample(torch.tensor([0]), torch.tensor([0]), guidance=-1.0)


def test_parse_prompt():
    assert parse_prompt("a red circle") == (SHAPES.index("circle"), list(COLOURS).index("red"))
    assert parse_prompt("一个蓝色三角形") == (SHAPES.index("triangle"), list(COLOURS).index("blue"))
    assert parse_prompt("a square") == (SHAPES.index("square"), None)
    with pytest.raises(DanluError, match="names no shape"):
        parse_prompt("a dog")
