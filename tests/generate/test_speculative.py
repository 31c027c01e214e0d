"""Batched speculative decoding (speculative.py): greedy equals the target's greedy output row by row, for a
draft model that is always right (the target itself), one that is mostly wrong (another random model) and
the n-gram prompt-lookup draft; sampling is reproducible and has the target's distribution; the acceptance
statistics are exact on a scripted target; bad setups are DanluErrors."""

import pytest
import torch

import danlu
from danlu.errors import DanluError
from danlu.generate.engine import generate_ids
from danlu.generate.options import GenerationOptions
from danlu.generate.speculative import prompt_lookup, speculative_decode, speculative_rows
from danlu.models.gpt import GPT, GPTConfig

V = 61


def tiny(seed: int, n_layer: int = 1, n_embd: int = 32, vocab: int = V, peaky: float = 20.0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig.from_name(
        "llama-tiny", vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, block_size=128, tie_embeddings=False
    )
    model = GPT(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(peaky)  # peaky distributions, like a trained model's (and greedy loops)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on a loaded machine its barriers cost 20x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def target():
    return tiny(0, 2, 64)


# Prompts of different lengths, two of them repetitive (prompt lookup finds something there at once).
PROMPTS = [[7], [5, 9, 13], [3, 4, 5, 3, 4, 5, 3, 4], [11, 2, 8, 30, 2, 8, 30, 2, 8]]


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask  # (B, T) each


def greedy_alone(model, prompt: list[int], n: int, stop_ids: list[int]) -> list[int]:
    x = torch.tensor([prompt])
    out = []
    for t in generate_ids(model, x, torch.ones_like(x), GenerationOptions(max_new_tokens=n), stop_ids):
        out.append(int(t))
        if out[-1] in stop_ids:
            break
    return out


@pytest.mark.parametrize("gamma", [1, 4])
@pytest.mark.parametrize("kind", ["itself", "other", "ngram"])
def test_batched_greedy_equals_greedy_row_by_row(target, kind, gamma):
    draft = {"itself": target, "other": tiny(1), "ngram": None}[kind]
    opts = GenerationOptions(
        max_new_tokens=40, num_draft_tokens=gamma, draft="ngram" if draft is None else "none"
    )
    ids, mask = left_pad(PROMPTS)
    for stop_ids in ([], [1]):
        outs, stats = speculative_rows(target, draft, ids, mask, opts, stop_ids)
        assert outs == [greedy_alone(target, p, 40, stop_ids) for p in PROMPTS], (kind, gamma, stop_ids)
        assert stats.tokens == sum(len(o) for o in outs)
        assert stats.proposed == sum(stats.row_proposed) and stats.accepted == sum(stats.row_accepted)
        assert 0 < stats.rounds < max(len(o) for o in outs)  # the rounds saved a forward somewhere
    if kind == "itself":  # a draft that is the target is always right
        assert stats.accepted == stats.proposed > 0
    elif kind == "other":  # another random model is mostly wrong
        assert stats.acceptance_rate < 0.5
    else:  # random models fall into loops, which prompt lookup then copies
        assert stats.accepted > 0


def test_draft_itself_single_row_counts(target):
    prompt = torch.tensor([PROMPTS[2]])
    out, stats = speculative_decode(target, target, prompt, GenerationOptions(max_new_tokens=21), [])
    assert out == greedy_alone(target, PROMPTS[2], 21, [])
    # 1 token from the prefill, then 4 drafts + 1 per round: 1 + 4·5 = 21
    assert (stats.rounds, stats.proposed, stats.accepted, stats.tokens) == (4, 16, 16, 21)


class Counter(torch.nn.Module):
    """A scripted target: the next token is always the last one + 1, at every position of a block."""

    def __init__(self):
        super().__init__()
        self.config = GPTConfig(vocab_size=50, block_size=128, n_layer=1, n_head=1, n_embd=8)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_kv_cache(self, B, max_len=None):
        return type("Cache", (), {"seq_len": 0})()

    def forward(self, input_ids, attention_mask=None, kv_cache=None, position_ids=None):
        kv_cache.seq_len += input_ids.shape[1]
        logits = torch.nn.functional.one_hot((input_ids + 1) % 50, 50).float() * 10  # (B, T, V)
        return type("Out", (), {"logits": logits})()


def test_ngram_acceptance_counts_are_exact():
    # Row 0: after "1 2" comes 3; the lookup of "1 2 3" proposes "4 5 1 2": 4 and 5 pass, 1 is not 6.
    # Row 1: after "1 2" comes 3; "1 2 3" proposes "1 2 3 1": 1 is not 4. Then nothing repeats.
    ids, mask = left_pad([[1, 2, 3, 4, 5, 1, 2], [1, 2, 3, 1, 2]])
    opts = GenerationOptions(max_new_tokens=6, draft="ngram")
    outs, stats = speculative_rows(Counter(), None, ids, mask, opts, [])
    assert outs == [[3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8]]
    assert stats.row_proposed == [4, 4] and stats.row_accepted == [2, 0]
    assert stats.acceptance_rate == 2 / 8 and stats.tokens == 12
    assert stats.rounds == 5  # row 1 needs 1 + 5 tokens from 5 rounds; row 0 re-feeds its lead meanwhile


def test_prompt_lookup():
    assert prompt_lookup([1, 2, 3, 9, 1, 2, 3], 3) == [9, 1, 2]  # the 3-gram's latest earlier match
    assert prompt_lookup([5, 1, 2, 7, 8, 2], 2) == [7, 8]  # only the 1-gram "2" occurs earlier
    assert prompt_lookup([4, 4], 5) == [4, 4, 4, 4, 4]  # the copy runs into its own output
    assert prompt_lookup([1, 2, 3], 4) == [] and prompt_lookup([1], 4) == []
    assert prompt_lookup([1, 2, 1, 2, 3, 1, 2], 1) == [3]  # latest, not first, occurrence


def exact_marginals(model, prompt: list[int], n: int) -> list[torch.Tensor]:
    """p(token i = v) for i < n under the model's temperature-1 softmax, by summing over every prefix."""
    prefixes = {tuple(prompt): 1.0}
    marginals = []
    for _ in range(n):
        m, nxt = torch.zeros(model.config.vocab_size), {}
        for seq, w in prefixes.items():
            p = model(torch.tensor([seq])).logits[0, -1].double().softmax(-1)
            m += w * p.float()
            for v in range(len(p)):
                nxt[(*seq, v)] = w * float(p[v])
        marginals.append(m)
        prefixes = nxt
    return marginals


@torch.inference_mode()
@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_sampled_speculative_has_the_target_distribution(kind):
    small_target, small_draft = tiny(5, vocab=5, peaky=2.0), tiny(6, vocab=5, peaky=2.0)
    prompt = [1, 2, 1, 2]  # repetitive: the n-gram draft proposes from the first round on
    R = 4000  # rows of one batch, each with its own random stream (no seed: drawn from torch's generator)
    torch.manual_seed(0)
    ids, mask = left_pad([prompt] * R)
    opts = GenerationOptions(
        max_new_tokens=3, num_draft_tokens=2, temperature=1.0, draft=kind.replace("model", "none")
    )
    outs, stats = speculative_rows(
        small_target, small_draft if kind == "model" else None, ids, mask, opts, []
    )
    assert 0 < stats.accepted < stats.proposed  # both branches of the acceptance rule ran
    got = torch.tensor(outs)  # (R, 3)
    for i, exact in enumerate(exact_marginals(small_target, prompt, 3)):
        empirical = torch.bincount(got[:, i], minlength=5).float() / R
        assert (empirical - exact).abs().max() < 0.03, (i, empirical, exact)  # ~4.7 standard errors


def test_sampled_speculative_with_a_seed_is_reproducible(target):
    ids, mask = left_pad(PROMPTS)
    for draft, kind in ((tiny(1), "none"), (None, "ngram")):
        opts = GenerationOptions(max_new_tokens=20, temperature=0.9, top_k=20, seed=3, draft=kind)
        a, _ = speculative_rows(target, draft, ids, mask, opts, [])
        b, _ = speculative_rows(target, draft, ids, mask, opts, [])
        assert a == b and all(len(x) == 20 for x in a)
        c, _ = speculative_rows(
            target, draft, ids, mask, GenerationOptions(**{**opts.__dict__, "seed": 4}), []
        )
        assert c != a


class _IdTokenizer:
    """Space-separated token ids as text."""

    eos_token_id, pad_token_id, bos_token_id = None, 0, None
    pad_id = 0

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f" {i}" for i in ids)


def test_generate_batches_speculative_rows(target):
    tok = _IdTokenizer()
    prompts = [" ".join(map(str, p)) for p in PROMPTS]
    plain = danlu.generate(target, tok, prompts, max_new_tokens=16)
    assert danlu.generate(target, tok, prompts, max_new_tokens=16, draft="ngram") == plain
    assert danlu.generate(target, tok, prompts, max_new_tokens=16, draft_model=tiny(1)) == plain


def test_bad_speculative_setups_are_clear_errors(target):
    tok = _IdTokenizer()
    for k in (0, 65):
        with pytest.raises(DanluError, match="num_draft_tokens must be"):
            GenerationOptions(num_draft_tokens=k)
    with pytest.raises(DanluError, match="draft must be one of none, ngram"):
        GenerationOptions(draft="medusa")
    other = tiny(2, vocab=V + 1)
    with pytest.raises(DanluError, match="draft model's vocabulary \\(62\\) differs"):
        danlu.generate(target, tok, ["5 9", "3"], draft_model=other)
    with pytest.raises(DanluError, match="either draft_model or draft='ngram'"):
        danlu.generate(target, tok, "5 9", draft="ngram", draft_model=target)
    with pytest.raises(DanluError, match="does not support \\['repetition_penalty'\\]"):
        danlu.generate(target, tok, "5 9", draft="ngram", repetition_penalty=1.3)
    with pytest.raises(DanluError, match="amateur_model"):
        danlu.generate(target, tok, "5 9", draft="ngram", amateur_model=target)
    with pytest.raises(DanluError, match="needs a draft"):
        speculative_rows(target, None, *left_pad([[5, 9]]), GenerationOptions(), [])


def test_generate_command_with_the_ngram_draft(tmp_path, capsys):
    from danlu.cli import main
    from danlu.tokenizers.bpe import BPETokenizer

    tokenizer = BPETokenizer.train(["the red fox runs over the hill, the red fox runs"] * 5, 280)
    torch.manual_seed(0)
    cfg = GPTConfig.from_name("llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=32)
    model = GPT(cfg).eval()
    danlu.save(model, tokenizer, tmp_path / "m")
    args = ["generate", "--model", str(tmp_path / "m"), "the red fox", "--raw", "--max-new-tokens", "12"]
    assert main([*args, "--draft", "ngram", "--num-draft-tokens", "3"]) == 0
    assert (
        capsys.readouterr().out == danlu.generate(model, tokenizer, "the red fox", max_new_tokens=12) + "\n"
    )
    assert main([*args, "--draft", "ngram", "--repetition-penalty", "1.2"]) != 0
    assert "error: speculative decoding does not support ['repetition_penalty']" in capsys.readouterr().err
    assert main([*args, "--draft", "ngram", "--num-draft-tokens", "99"]) == 2
    assert "num_draft_tokens must be" in capsys.readouterr().err
