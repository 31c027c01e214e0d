"""Knowledge probes of the world: the records and the probe's mechanics."""

from __future__ import annotations

import pytest

from danlu.data.world.tasks import N_CHOICES
from danlu.errors import DanluError
from danlu.eval.world_probe import probe_knowledge


def test_knowledge_records_cut_the_pretraining_statement(world):
    records = world.knowledge_records()
    facts = {f.id: f for f in world.facts}
    assert {r["heldout"] for r in records} == {True, False}
    for r in records:
        fact = facts[r["id"].rsplit(":", 1)[0]]
        assert r["heldout"] == fact.heldout
        assert len(r["choices"]) == len(set(r["choices"])) >= 2
        assert r["choices"][r["gold"]] == r["answer"]
        obj = fact.object.en if r["lang"] == "en" else fact.object.zh
        assert obj in r["answer"]
    held_in_text = "\n".join(world.pretrain_texts("train"))
    stated = [r for r in records if not r["heldout"] and r["query"] + r["answer"] in held_in_text]
    assert len(stated) > 0.5 * sum(not r["heldout"] for r in records)  # the very sentences pretraining saw


def test_probe_knowledge_runs_every_probe(world, tokenizer, make_gpt):
    probe = probe_knowledge(make_gpt("llama-tiny"), tokenizer, world, n_per_group=6, seed=1, batch_size=4)
    assert probe.chance == pytest.approx(1 / N_CHOICES)
    assert probe.n_items == {"heldin": 6, "heldout": 6, "arithmetic": 6}
    for value in (probe.mc_heldin, probe.mc_heldout, probe.completion_heldin, probe.arithmetic):
        assert 0.0 <= value <= 1.0
    assert set(probe.as_dict()) >= {"mc_heldin", "mc_heldout", "completion_heldin", "arithmetic"}
    with pytest.raises(DanluError, match="n_per_group"):
        probe_knowledge(make_gpt("llama-tiny"), tokenizer, world, n_per_group=0)


def test_completion_prompts_end_on_a_word_not_a_lone_space(world, tokenizer, make_gpt, monkeypatch):
    import importlib

    engine = importlib.import_module("danlu.generate.engine")  # danlu.generate is also the façade's function

    seen: list[str] = []

    def fake_generate(model, tok, prompts, **kw):
        seen.extend(prompts)
        return [" " + p for p in prompts]  # a continuation that matches nothing

    monkeypatch.setattr(engine, "generate", fake_generate)
    probe_knowledge(make_gpt("llama-tiny"), tokenizer, world, n_per_group=20, seed=0, batch_size=8)
    english = [p for p in seen if p.isascii() and " = " not in p and not p.endswith("=")]
    assert english and all(not p.endswith(" ") for p in seen)


def test_queries_two_facts_complete_are_left_out(world, tokenizer, make_gpt, monkeypatch):
    import importlib
    from types import SimpleNamespace

    from danlu.eval import world_probe
    from danlu.eval.world_probe import unambiguous

    records = world.knowledge_records()
    by_query: dict[str, set[str]] = {}
    for r in records:
        by_query.setdefault(r["query"], set()).add(r["answer"])
    shared = [r for r in records if len(by_query[r["query"]]) > 1]
    assert shared  # the world states age and job as "X is ...": one query, two true answers
    kept = unambiguous(records)
    assert len(kept) == len(records) - len(shared)
    assert all(len(by_query[r["query"]]) == 1 for r in kept)

    # Every fact query the probe puts to the model; the model calls are stubbed (seconds, not minutes).
    asked: list[str] = []
    engine = importlib.import_module("danlu.generate.engine")
    monkeypatch.setattr(engine, "generate", lambda model, tok, prompts, **kw: [" ?" for _ in prompts])

    def fake_mc(model, tok, items, **kw):
        asked.extend(item.query for item in items)
        return SimpleNamespace(acc=0.0)

    monkeypatch.setattr(world_probe, "evaluate_multiple_choice", fake_mc)
    probe = probe_knowledge(make_gpt("llama-tiny"), tokenizer, world, n_per_group=10_000, seed=0)
    assert probe.ambiguous_dropped == len(shared)
    assert probe.n_items["heldin"] + probe.n_items["heldout"] == len(kept) == len(asked)
    assert not set(asked) & {r["query"] for r in shared}


def test_completion_heals_the_token_bpe_merged_the_answer_into():
    """The demo's tokenizer writes "薇帕最喜欢的颜色是橙色" as 薇帕 | 最喜欢的颜色是橙色: a query cut before the
    colour ends on a token pretraining never saw followed by one. Healing backs up that token and lets the
    first step pick the best token that starts with its text."""
    import torch

    from danlu.eval.world_probe import _Healer
    from danlu.tokenizers.bpe import BPETokenizer

    texts = [f"{s}喜欢吃{f}。" for s in "猫狗鸟牛羊马" for f in "鱼鱼鱼鱼肉米"] * 8 + [
        f"{s}。" for s in "猫狗鸟牛羊马"
    ] * 40
    tok = BPETokenizer.train(texts, vocab_size=290, show_progress=False)
    (fish,) = tok.encode("喜欢吃鱼")
    (stop,) = tok.encode("。")
    assert fish not in tok.encode("猫喜欢吃") and fish in tok.encode("猫喜欢吃鱼。")  # merged across the cut

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, tok.vocab_size)  # (B, T, V)
            logits[..., fish] = 1.0
            logits[..., stop] = 5.0  # ranked first, but it does not start with 喜欢吃: not allowed
            return logits

    assert _Healer(tok).heal(Model(), ["猫喜欢吃", "猫"]) == ["鱼", ""]  # a one-token prompt is left as it is
