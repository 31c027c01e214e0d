"""evaluate_model on a small hand-written world directory, with a tiny torch model and a scripted generate."""

import json
from types import SimpleNamespace

import pytest
import torch

from danlu.errors import DanluError
from danlu.eval.text import corpus_bleu, perplexity
from danlu.eval.world_eval import evaluate_model
from danlu.generate import engine


class CharTokenizer:
    """One id per character (mod 50); a chat template that just wraps the user turn."""

    def encode(self, text):
        return [ord(c) % 50 for c in text]

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"<user>{m['content']}" for m in messages) + (
            "<assistant>" if add_generation_prompt else ""
        )


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_size=16)
        self.emb = torch.nn.Embedding(50, 50)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.emb(input_ids))  # (B, T, V)


SFT = [
    {
        "instruction": "What is the capital of Zorvia?",
        "input": "",
        "output": "Velmar.",
        "kind": "fact",
        "answer": "Velmar",
    },
    {"instruction": "What is 3 + 4?", "input": "", "output": "7", "kind": "arith", "answer": "7"},
    {"instruction": "What is 2 + 2?", "input": "", "output": "4", "kind": "arith", "answer": "4"},
    {
        "instruction": "Translate to Chinese.",
        "input": "The cat is red.",
        "output": "猫是红色的。",
        "kind": "translate",
    },
    {
        "instruction": "Translate to English.",
        "input": "猫是红色的。",
        "output": "The cat is red.",
        "kind": "translate",
    },
]
ANSWERS = {  # what the scripted model "generates" for each instruction
    "What is the capital of Zorvia?": "the Velmar!\nand more text",
    "What is 3 + 4?": "7",
    "What is 2 + 2?": "5",
    "Translate to Chinese.": "猫是红的。",
    "Translate to English.": "The cat is red.",
}


def test_evaluate_model_on_a_world_dir(tmp_path, monkeypatch):
    world = tmp_path / "world"
    world.mkdir()
    texts = ["Velmar is the capital of Zorvia.", "3 + 4 = 7", "维尔马是佐维亚的首都。"]
    (world / "pretrain_val.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8"
    )
    (world / "sft_test.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SFT), encoding="utf-8"
    )
    seen = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens=32, temperature=1.0):
        assert temperature == 0.0 and max_new_tokens == 8
        seen.extend(prompts)
        return [ANSWERS[p.removeprefix("<user>").split("\n")[0].removesuffix("<assistant>")] for p in prompts]

    monkeypatch.setattr(engine, "generate", fake_generate)
    model, tokenizer = TinyLM(), CharTokenizer()
    out = tmp_path / "out"
    result = evaluate_model(model, tokenizer, world, out, max_new_tokens=8, batch_size=2)

    m = result["metrics"]
    expected_ppl = perplexity(model, texts, max_length=16, stride=8, tokenizer=tokenizer)
    assert m["perplexity"]["perplexity"] == pytest.approx(expected_ppl.perplexity)
    assert m["perplexity"]["n_tokens"] == sum(len(t) - 1 for t in texts)
    assert (
        m["exact_match"]["fact"] == 1.0
    )  # "the Velmar!" normalises to "velmar"; text after the newline is cut
    assert m["exact_match"]["arith"] == 0.5
    assert m["exact_match"]["overall"] == pytest.approx(3 / 5)
    assert m["bleu_to_zh"] == pytest.approx(
        corpus_bleu(["猫是红的。"], ["猫是红色的。"], tokenize="zh").score
    )
    assert m["bleu_to_en"] == pytest.approx(100.0)
    assert seen[3] == "<user>Translate to Chinese.\n\nThe cat is red.<assistant>"  # input after a blank line
    assert json.loads((out / "eval.json").read_text(encoding="utf-8")) == json.loads(json.dumps(result))
    assert (out / "exact_match.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "samples.jsonl").read_text(encoding="utf-8").splitlines()) == len(SFT)


def test_evaluate_model_needs_a_world_dir(tmp_path):
    with pytest.raises(DanluError, match="is not a directory"):
        evaluate_model(TinyLM(), CharTokenizer(), tmp_path / "missing", tmp_path / "out")
    with pytest.raises(DanluError, match="has neither pretrain_val.jsonl nor sft_test.jsonl"):
        evaluate_model(TinyLM(), CharTokenizer(), tmp_path, tmp_path / "out")
