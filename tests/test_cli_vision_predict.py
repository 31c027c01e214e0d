"""`danlu vit predict` and `danlu clip predict`: a trained vision checkpoint labels PNG files and .npy arrays,
the same labels the models give in Python (tiny random models; seconds)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from danlu.cli import main
from danlu.data.pictures import SHAPES, make_pictures, to_tensor
from danlu.models.clip import CLIP, CLIPConfig, zero_shot_classify
from danlu.models.vit import ViT, ViTConfig
from danlu.recipes.vision import SHAPE_TEMPLATES, _save_json
from danlu.tokenizers.bpe import BPETokenizer


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Four picture-world images as PNGs (enlarged 4x, as `save_grid` shows them) and one as .npy."""
    d = tmp_path_factory.mktemp("pics")
    pics = make_pictures(5, "test", seed=3, image_size=8)
    paths = []
    for i, image in enumerate(pics.images[:4]):
        path = d / f"p{i}.png"
        Image.fromarray(image).resize((32, 32), Image.NEAREST).save(path)
        paths.append(str(path))
    np.save(d / "p4.npy", pics.images[4])
    return [*paths, str(d / "p4.npy")]


def _pixels(paths):
    from danlu.cli.vision import read_image

    return to_tensor(np.stack([read_image(p, 8) for p in paths]))


def test_vit_predict_matches_the_model(tmp_path, pictures, capsys):
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=8, patch_size=4, n_embd=16, n_layer=1, n_head=2, n_classes=len(SHAPES)))
    _save_json(model, tmp_path / "vit")
    assert main(["vit", "predict", "--model", str(tmp_path / "vit"), *pictures, "--device", "cpu"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    expected = model.eval()(_pixels(pictures)).logits.softmax(-1)
    assert [r[0] for r in rows] == pictures
    assert [r[1] for r in rows] == [SHAPES[i] for i in expected.argmax(-1).tolist()]
    assert [float(r[2]) for r in rows] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-3)
    code = main(["vit", "predict", "--model", str(tmp_path / "vit"), pictures[0], "--labels", "a", "b"])
    assert code == 2 and "4 classes but 2 labels" in capsys.readouterr().err


def test_clip_predict_matches_zero_shot_classify(tmp_path, pictures, capsys):
    captions = [t.format(label=s) for s in SHAPES for t in SHAPE_TEMPLATES] * 3
    tokenizer = BPETokenizer.train(captions, 300, show_progress=False)
    torch.manual_seed(0)
    vision = ViTConfig(image_size=8, patch_size=4, n_embd=16, n_layer=1, n_head=2, n_classes=0)
    model = CLIP(CLIPConfig(vision=vision, vocab_size=tokenizer.vocab_size, text_embd=16, text_layer=1,
                            text_head=2, embed_dim=16))  # fmt: skip
    _save_json(model, tmp_path / "clip")
    tokenizer.save(tmp_path / "clip")
    labels = ["circle", "square", "cross"]
    argv = ["clip", "predict", "--model", str(tmp_path / "clip"), *pictures, "--labels", *labels, "--json"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    expected = zero_shot_classify(model.eval(), tokenizer, _pixels(pictures), labels, SHAPE_TEMPLATES)
    assert [r["label"] for r in rows] == [labels[i] for i in expected.tolist()]
    assert all(sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3) for r in rows)


def test_predict_refuses_bad_inputs(tmp_path, pictures, capsys):
    torch.manual_seed(0)
    _save_json(ViT(ViTConfig(image_size=8, n_embd=16, n_layer=1, n_head=2, n_classes=4)), tmp_path / "vit")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    np.save(tmp_path / "floats.npy", np.zeros((8, 8, 3), dtype=np.float32))
    for image, needle in [
        ("junk.png", "not an image"),
        ("floats.npy", "want a uint8 array"),
        ("nope.png", "no such image"),
    ]:
        assert main(["vit", "predict", "--model", str(tmp_path / "vit"), str(tmp_path / image)]) == 2
        assert needle in capsys.readouterr().err
    assert main(["clip", "predict", "--model", str(tmp_path / "vit"), pictures[0]]) == 2
    assert "does not hold a CLIP" in capsys.readouterr().err
