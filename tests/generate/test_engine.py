"""Decoding: KV-cached greedy equals naive recomputation, batched equals one-by-one, streaming equals generate,
stop strings, UTF-8 split across tokens, and option validation."""

import pytest
import torch

import danlu
from danlu.errors import DanluError
from danlu.generate.processors import top_k_filter, top_p_filter
from danlu.models.gpt import GPT, GPTConfig


class ByteTokenizer:
    """One token per UTF-8 byte, plus <eos> = 256 and <pad> = 257: multi-byte characters span tokens."""

    eos_token_id, pad_token_id, bos_token_id, vocab_size = 256, 257, None, 258
    pad_id = 257  # Tokenizer.pad_id: the pad token

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_to_id(self, token):
        return None


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("llama-tiny", vocab_size=258, n_layer=2, n_embd=64, block_size=128)).eval()


TOK = ByteTokenizer()


def naive_greedy(model, prompt, n):
    ids = TOK.encode(prompt)
    for _ in range(n):
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == TOK.eos_token_id:
            break
        ids.append(nxt)
    return TOK.decode(ids[len(TOK.encode(prompt)) :])


@torch.no_grad()
def test_cached_greedy_equals_naive(model):
    for prompt in ["hello", "佐维兰", "a"]:
        assert danlu.generate(model, TOK, prompt, max_new_tokens=20) == naive_greedy(model, prompt, 20)


def test_batched_equals_one_by_one(model):
    prompts = ["The red fox", "x", "佐维兰住在一个", "12 + 3 ="]
    one = [danlu.generate(model, TOK, p, max_new_tokens=16) for p in prompts]
    assert danlu.generate(model, TOK, prompts, max_new_tokens=16) == one
    sampled_one = [
        danlu.generate(model, TOK, p, max_new_tokens=8, temperature=1.0, seed=3) for p in prompts[:1]
    ]
    assert danlu.generate(model, TOK, prompts[:1], max_new_tokens=8, temperature=1.0, seed=3) == sampled_one


def test_stream_equals_generate(model):
    for prompt in ["佐维兰", "hello"]:
        pieces = list(danlu.stream(model, TOK, prompt, max_new_tokens=40, temperature=1.0, seed=1))
        assert "".join(pieces) == danlu.generate(
            model, TOK, prompt, max_new_tokens=40, temperature=1.0, seed=1
        )


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token sequence, whatever the input: the next scripted id gets the top logit."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.config = GPTConfig(vocab_size=258, block_size=256, n_layer=1, n_head=1, n_embd=8)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_kv_cache(self, B, max_len=None):
        return type("Cache", (), {"seq_len": 0})()

    def forward(self, input_ids, attention_mask=None, kv_cache=None, position_ids=None):
        B, T = input_ids.shape
        produced = max(0, kv_cache.seq_len + T - self.prompt_len) if kv_cache.seq_len else 0
        if kv_cache.seq_len == 0:
            self.prompt_len = T
        kv_cache.seq_len += T
        logits = torch.zeros(B, T, 258)
        logits[:, -1, self.script[min(produced, len(self.script) - 1)]] = 10.0
        return type("Out", (), {"logits": logits})()


def test_stream_never_splits_a_multibyte_character():
    text = "佐维兰 likes 米饭。🙂"
    scripted = ScriptedModel(list(text.encode("utf-8")) + [256])
    pieces = list(danlu.stream(scripted, TOK, "x", max_new_tokens=60))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # 3- and 4-byte characters arrive whole
    assert len(pieces) > 5  # and it really streamed


def test_stop_string_cuts_output(model):
    full = danlu.generate(model, TOK, "hello", max_new_tokens=30)
    stop = full[5:7]
    assert stop and full.find(stop) == 5 or full.find(stop) < 5
    cut = danlu.generate(model, TOK, "hello", max_new_tokens=30, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(danlu.stream(model, TOK, "hello", max_new_tokens=30, stop=[stop])) == cut


def test_sampling_is_seeded(model):
    a = danlu.generate(model, TOK, "abc", max_new_tokens=12, temperature=1.0, seed=7)
    b = danlu.generate(model, TOK, "abc", max_new_tokens=12, temperature=1.0, seed=7)
    assert a == b


@pytest.mark.parametrize(
    "options, needle",
    [({"top_p": 0.0}, "top_p must be in \\(0, 1\\], got 0.0"), ({"top_p": 1.5}, "top_p"),
     ({"temperature": -1.0}, "temperature must be >= 0"), ({"top_k": -2}, "top_k"),
     ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
     ({"max_new_tokens": 500}, "max_new_tokens=500 plus the 3-token prompt exceeds the model's context of 128")],
)  # fmt: skip
def test_bad_options(model, options, needle):
    with pytest.raises(DanluError, match=needle):
        danlu.generate(model, TOK, "abc", **options)


def test_prompt_longer_than_context(model):
    with pytest.raises(DanluError, match="the prompt is 200 tokens but the model's context is 128"):
        danlu.generate(model, TOK, "a" * 200)


def test_top_k_and_top_p_keep_the_right_sets():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(3, 40, generator=g)
        kept = top_k_filter(logits, 5).isfinite()
        assert (kept.sum(-1) == 5).all()
        assert torch.equal(kept, logits >= logits.topk(5).values[:, -1:])
        p = float(torch.rand(1, generator=g).clamp(0.05, 0.95))
        kept = top_p_filter(logits, p).isfinite()
        probs = logits.softmax(-1)
        for row in range(3):
            order = probs[row].argsort(descending=True)
            n = int(kept[row].sum())
            assert set(order[:n].tolist()) == set(kept[row].nonzero().flatten().tolist())
            assert probs[row, order[:n]].sum() >= p - 1e-6  # enough mass ...
            assert n == 1 or probs[row, order[: n - 1]].sum() < p  # ... and the smallest such set


@pytest.mark.parametrize(
    "options, needle",
    [({"num_beams": 0}, "num_beams must be >= 1, got 0"), ({"min_p": 1.5}, "min_p must be in \\[0, 1\\]"),
     ({"repetition_penalty": 0.0}, r"repetition_penalty must be in \[0.01, 100\]"),
     ({"presence_penalty": 3.0}, "presence_penalty must be in \\[-2, 2\\], got 3.0"),
     ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be >= 0"),
     ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens must be in \\[0, max_new_tokens=4\\]"),
     ({"temperature": float("nan")}, "temperature must be a finite number"),
     ({"num_beams": 2, "temperature": 0.7}, "num_beams=2 with temperature=0.7"),
     ({"logit_bias": {3: 500}}, "logit_bias maps token ids"), ({"logit_bias": {999: 1.0}}, "vocabulary has 258"),
     ({"top_q": 0.5}, "unknown generation option\\(s\\) \\['top_q'\\]")],
)  # fmt: skip
def test_more_bad_options(model, options, needle):
    with pytest.raises(DanluError, match=needle):
        danlu.generate(model, TOK, "abc", **options)


def test_sampling_batched_equals_one_by_one_with_a_seed(model):
    prompts = ["The red fox", "x", "佐维兰住在"]
    kw = dict(max_new_tokens=12, temperature=0.9, top_p=0.9, min_p=0.05, seed=11)
    assert danlu.generate(model, TOK, prompts, **kw) == [danlu.generate(model, TOK, p, **kw) for p in prompts]


def new_ids(model, prompt, **kw):
    from danlu.generate.engine import generate_ids
    from danlu.generate.options import GenerationOptions

    ids = torch.tensor([TOK.encode(prompt)])
    return [int(t) for t in generate_ids(model, ids, torch.ones_like(ids), GenerationOptions(**kw), [])]


def test_penalties_and_bias_steer_the_output(model):
    plain = new_ids(model, "aaaa", max_new_tokens=24)
    no_rep = new_ids(model, "aaaa", max_new_tokens=24, no_repeat_ngram_size=1)
    assert len(set(no_rep)) == len(no_rep) and ord("a") not in no_rep  # each id once; the prompt counts too
    freq = new_ids(model, "aaaa", max_new_tokens=24, frequency_penalty=2.0)
    assert max(freq.count(t) for t in freq) <= max(plain.count(t) for t in plain)
    assert new_ids(model, "aaaa", max_new_tokens=5, logit_bias={ord("z"): 100}) == [ord("z")] * 5
    rep = new_ids(model, "aaaa", max_new_tokens=24, repetition_penalty=5.0)
    assert len(set(rep)) >= len(set(plain))


def test_min_new_tokens_holds_off_eos():
    scripted = ScriptedModel([256])  # would stop at once
    assert danlu.generate(scripted, TOK, "x", max_new_tokens=5) == ""
    assert len(danlu.generate(scripted, TOK, "x", max_new_tokens=5, min_new_tokens=3)) == 3


def test_beam_search_through_generate_and_stream(model):
    prompts = ["hello", "佐维兰"]
    beams = danlu.generate(model, TOK, prompts, max_new_tokens=10, num_beams=3)
    assert beams == [danlu.generate(model, TOK, p, max_new_tokens=10, num_beams=3) for p in prompts]
    assert "".join(danlu.stream(model, TOK, "hello", max_new_tokens=10, num_beams=3)) == beams[0]


class SpaceTokenizer:
    """A SentencePiece-like vocabulary: '▁' marks a word start and decode strips the leading space, so a token
    decoded alone differs from the same token decoded in context."""

    eos_token_id, pad_token_id, bos_token_id = 0, 0, None
    vocab = ["<eos>", "▁the", "▁red", "▁fox", "s", "▁", "é", "!"]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.vocab[i] for i in ids if i).replace("▁", " ").lstrip(" ")


def test_text_tracker_streams_with_context():
    from danlu.generate.engine import TextTracker

    tracker = TextTracker(SpaceTokenizer(), stop=["s!"])
    pieces = [tracker.push(t) for t in [1, 2, 3, 4, 5, 6, 7, 4, 7, 2]] + [tracker.flush()]
    assert "".join(pieces) == "the red foxs é!"  # cut before the stop string "s!"
    assert pieces[1] == " red"  # the space between words survives incremental decoding
