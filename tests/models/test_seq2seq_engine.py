"""The seq2seq Transformer decoded by the one engine (generate/encoder_decoder.py): greedy and beam outputs
equal those of the model's own loops before they were removed (main at ed09d30, `models.seq2seq.greedy_decode`
and `beam_decode`, pinned in seq2seq_pinned_outputs.json), and the GNMT length penalty is the beam search's."""

import json
from pathlib import Path

import pytest
import torch

from danlu.generate.encoder_decoder import beam_decode, greedy_decode
from danlu.generate.options import GenerationOptions
from danlu.generate.search import length_normalized
from danlu.models.seq2seq import Seq2SeqConfig, Transformer

PINNED = json.loads((Path(__file__).parent / "seq2seq_pinned_outputs.json").read_text())


def _model(kind):
    torch.manual_seed({"post": 0, "pre": 1, "sharp": 2}[kind])
    cfg = Seq2SeqConfig(vocab_size=37, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                        norm_first=kind == "pre")  # fmt: skip
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if kind == "sharp":
            m.embed.weight.mul_(3)
    return m


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 37, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    mask[3, 8:] = 0
    return src, mask


def test_engine_decodes_as_the_removed_seq2seq_loops():
    torch.set_num_threads(1)
    models = {}
    for case in PINNED:
        m = models.setdefault(case["kind"], _model(case["kind"]))
        src, mask = _batch(case["seed"])
        if case["beams"] == 1:
            got = greedy_decode(m, src, mask, case["max_new_tokens"])
        else:
            got = beam_decode(m, src, mask, case["beams"], case["max_new_tokens"], case["alpha"])
        assert got == case["ids"], case


def test_pins_hold_cases_where_length_capped_beams_lose():
    # Among the pins: a beam that ends in EOS early beats a longer one cut at max_new_tokens (the removed
    # loop's rule, finish_at_length=False); with transformers' rule the capped beam would have won.
    short = [c for c in PINNED if c["beams"] > 1 and any(len(r) < c["max_new_tokens"] for r in c["ids"])]
    assert short


def test_gnmt_length_penalty_form():
    score = torch.tensor([-3.0])
    assert length_normalized(score, 7, 0.6, "gnmt").item() == pytest.approx(-3.0 / ((5 + 7) / 6) ** 0.6)
    assert length_normalized(score, 7, 0.6, "power").item() == pytest.approx(-3.0 / 7**0.6)
    with pytest.raises(Exception, match="length_penalty_form must be one of power, gnmt"):
        GenerationOptions(length_penalty_form="wu")


def test_stepper_encodes_once():
    m = _model("post")
    calls = []
    encode = m.encode
    m.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    src, mask = _batch(0)
    beam_decode(m, src, mask, beam_size=3, max_new_tokens=6)
    assert len(calls) == 1
