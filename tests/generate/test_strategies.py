"""Speculative decoding (greedy output equals the target's, the acceptance rule samples exactly p, the
acceptance rate is reported) and contrastive decoding (equals a naive re-computation of Li et al.'s rule)."""

import pytest
import torch

import danlu
from danlu.errors import DanluError
from danlu.generate.engine import generate_ids
from danlu.generate.options import GenerationOptions
from danlu.generate.search import contrastive_scores
from danlu.generate.speculative import speculative_accept, speculative_decode
from danlu.models.gpt import GPT, GPTConfig

V = 61


def tiny(seed: int, n_layer: int, n_embd: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(
        GPTConfig.from_name("llama-tiny", vocab_size=V, n_layer=n_layer, n_embd=n_embd, block_size=96)
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaky distributions, like a trained model's
    return model.eval()


@pytest.fixture(scope="module")
def target():
    return tiny(0, 2, 64)


PROMPTS = [torch.randint(1, V, (1, n), generator=torch.Generator().manual_seed(n)) for n in (1, 3, 6, 9)]


def greedy_alone(model, prompt, n):
    opts = GenerationOptions(max_new_tokens=n)
    return [int(t) for t in generate_ids(model, prompt, torch.ones_like(prompt), opts, [0])]


@pytest.mark.parametrize("gamma", [1, 4])
def test_speculative_greedy_equals_target(target, gamma):
    draft = tiny(1, 1, 32)
    rates = []
    for prompt in PROMPTS:
        opts = GenerationOptions(max_new_tokens=30, num_draft_tokens=gamma)
        out, stats = speculative_decode(target, draft, prompt, opts, [0])
        assert out == greedy_alone(target, prompt, 30)
        assert stats.proposed >= stats.accepted >= 0 and stats.rounds > 0
        rates.append(stats.acceptance_rate)
    assert all(0.0 <= r <= 1.0 for r in rates)


def test_speculative_with_itself_accepts_everything(target):
    out, stats = speculative_decode(target, target, PROMPTS[2], GenerationOptions(max_new_tokens=21), [])
    assert out == greedy_alone(target, PROMPTS[2], 21)
    assert (
        stats.acceptance_rate == 1.0 and stats.rounds == 4
    )  # 1 token from prefill, then 4 + 1 per round: 1 + 4·5 = 21


def test_speculative_acceptance_rule_samples_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1, 0.6]])  # target at draft pos and after
    q = torch.tensor([[0.1, 0.1, 0.3, 0.2, 0.3]])  # a draft that is quite wrong
    counts = torch.zeros(5)
    n_trials = 20000
    for _ in range(n_trials):
        x = int(torch.multinomial(q[0], 1, generator=g))
        n, new = speculative_accept(p, q, [x], g)
        counts[x if n == 1 else new] += 1
    assert (counts / n_trials - p[0]).abs().max() < 0.015  # 3 standard errors at n = 20000
    assert counts[4] == 0  # a token the target never picks never appears


def test_speculative_sampling_through_generate(target):
    draft = tiny(1, 1, 32)
    tok = _IdTokenizer()
    a = danlu.generate(
        target, tok, "5 9 13", max_new_tokens=12, temperature=0.9, top_k=20, seed=3, draft_model=draft
    )
    b = danlu.generate(
        target, tok, "5 9 13", max_new_tokens=12, temperature=0.9, top_k=20, seed=3, draft_model=draft
    )
    assert a == b and len(a.split()) == 12
    greedy = danlu.generate(target, tok, ["5 9 13", "7"], max_new_tokens=10, draft_model=draft)
    assert greedy == danlu.generate(target, tok, ["5 9 13", "7"], max_new_tokens=10)


def test_speculative_rejects_options_it_cannot_honour(target):
    with pytest.raises(DanluError, match="does not support \\['repetition_penalty'\\]"):
        speculative_decode(target, target, PROMPTS[0], GenerationOptions(repetition_penalty=1.2), [])


def naive_contrastive(expert, amateur, prompt, n, alpha):
    ids = prompt[0].tolist()
    for _ in range(n):
        x = torch.tensor([ids])
        e = expert(x).logits[0, -1].softmax(-1)
        a = amateur(x).logits[0, -1].softmax(-1)
        score = torch.where(e >= alpha * e.max(), e.log() - a.log(), torch.tensor(float("-inf")))
        ids.append(int(score.argmax()))
    return ids[prompt.shape[1] :]


@torch.inference_mode()
def test_contrastive_decoding_equals_naive(target):
    amateur = tiny(2, 1, 32)
    for prompt in PROMPTS[:3]:
        opts = GenerationOptions(max_new_tokens=12, contrastive_alpha=0.1)
        got = [
            int(t)
            for t in generate_ids(target, prompt, torch.ones_like(prompt), opts, [], amateur_model=amateur)
        ]
        assert got == naive_contrastive(target, amateur, prompt, 12, 0.1)
    # A flat amateur subtracts a constant: contrastive decoding is then greedy search.
    flat = tiny(3, 1, 32)
    with torch.no_grad():
        flat.lm_head.weight.zero_()
    opts = GenerationOptions(max_new_tokens=12)
    got = list(generate_ids(target, PROMPTS[1], torch.ones_like(PROMPTS[1]), opts, [], amateur_model=flat))
    assert [int(t) for t in got] == greedy_alone(target, PROMPTS[1], 12)
    assert contrastive_scores(torch.zeros(1, 3), torch.zeros(1, 3), 1.0).isfinite().all()


class _IdTokenizer:
    """Space-separated token ids as text."""

    eos_token_id, pad_token_id, bos_token_id = None, 0, None
    pad_id = 0  # Tokenizer.pad_id: the pad token

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f" {i}" for i in ids)


def test_extra_models_are_checked(target):
    tok = _IdTokenizer()
    other = GPT(GPTConfig.from_name("llama-tiny", vocab_size=V + 1, n_layer=1, n_embd=32, block_size=96))
    with pytest.raises(DanluError, match="amateur model's vocabulary \\(62\\) differs"):
        danlu.generate(target, tok, "5 9", amateur_model=other)
    with pytest.raises(DanluError, match="draft model's vocabulary \\(62\\) differs"):
        danlu.generate(target, tok, "5 9", draft_model=other)
    with pytest.raises(DanluError, match="not both"):
        danlu.generate(target, tok, "5 9", draft_model=target, amateur_model=target)
    with pytest.raises(DanluError, match="num_beams=2 cannot be combined"):
        danlu.generate(target, tok, "5 9", num_beams=2, draft_model=target)
