"""Continuous batching (generate/continuous.py): rows joining and leaving a SlotBatch between steps, at
different lengths and with different options, each get exactly the tokens engine.run gives them alone
(greedy, seeded sampling, penalties, stop strings); one forward decodes them all; the prefix cache reuses a
prompt's keys and values."""

import pytest
import torch

from danlu.errors import DanluError
from danlu.generate.continuous import SlotBatch
from danlu.generate.engine import GenerationOptions, run
from danlu.generate.prefix_cache import PrefixCache
from danlu.models.gpt import GPT, GPTConfig


class ByteTokenizer:
    """One token per UTF-8 byte, plus <eos> = 256 and <pad> = 257."""

    eos_token_id, pad_token_id, bos_token_id, vocab_size = 256, 257, None, 258
    pad_id = 257

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_to_id(self, token):
        return None


TOK = ByteTokenizer()


def wide(cfg: GPTConfig) -> GPT:
    """A random GPT whose weights are wide enough that greedy decoding wanders over the vocabulary (a row that
    read another row's keys would soon pick other tokens)."""
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


# Rotary and learned positions, and a sliding window (8, shorter than the rows: its mask is per row too).
SHAPES = {"llama-tiny": {}, "gpt2-tiny": {},
          "gemma2-tiny": dict(sliding_window=8, layer_types=["sliding", "full"], embedding_scale=8.0)}  # fmt: skip


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request):
    shape = dict(vocab_size=258, n_layer=2, n_embd=64, block_size=128, **SHAPES[request.param])
    return wide(GPTConfig.from_name(request.param, **shape))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is faster than two fighting for a busy machine's cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PROMPTS = [
    "The red fox",
    "x",
    "佐维兰住在一个小村子里, 每天早上",
    "12 + 3 =",
    "Deva walks to the market and buys",
]


def drive(batch: SlotBatch, requests: list[tuple[int, str, GenerationOptions]], limit: int = 500):
    """Add request i at step arrivals[i] (later when no slot is free); step until every row is done. Returns
    each request's Completion and the step at which it finished."""
    waiting = sorted(range(len(requests)), key=lambda i: requests[i][0])
    owner, done, finished_at = {}, {}, {}
    for step in range(limit):
        while waiting and requests[waiting[0]][0] <= step:
            i = waiting[0]
            _, prompt, opts = requests[i]
            ids = TOK.encode(prompt)
            if not batch.can_admit(len(ids), opts.max_new_tokens):
                break
            owner[batch.add_row(ids, opts)] = waiting.pop(0)
        if not owner and not waiting:
            return done, finished_at
        for u in batch.step():
            if u.done is not None:
                i = owner.pop(u.row)
                done[i], finished_at[i] = u.done, step
    raise AssertionError("rows never finished")


def alone(model, prompt: str, opts: GenerationOptions):
    return run(model, TOK, [prompt], opts)[0]


def assert_same(got, want):
    assert got.token_ids == want.token_ids
    assert got.text == want.text and got.finish_reason == want.finish_reason
    assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)


def test_staggered_greedy_rows_equal_each_row_alone(model):
    lengths = [12, 30, 5, 20, 9, 25]
    arrivals = [0, 0, 2, 3, 7, 8]
    prompts = [*PROMPTS, PROMPTS[0] * 3]  # the last one (33 tokens) is prefilled in chunks of 8
    requests = [(a, p, GenerationOptions(max_new_tokens=n)) for a, p, n in zip(arrivals, prompts, lengths)]
    batch = SlotBatch(
        model, TOK, max_rows=3, prefill_chunk=8
    )  # fewer slots than rows: some wait, slots reused
    done, _ = drive(batch, requests)
    for i, (_, p, opts) in enumerate(requests):
        assert_same(done[i], alone(model, p, opts))


def test_seeded_sampling_and_per_row_options_equal_each_row_alone(model):
    options = [
        dict(temperature=0.9, seed=1, max_new_tokens=20),
        dict(temperature=0.9, seed=2, max_new_tokens=14),  # same options, other seed: picked with row 0
        dict(temperature=1.3, top_k=20, top_p=0.9, seed=7, max_new_tokens=16),
        dict(max_new_tokens=18, repetition_penalty=1.3, no_repeat_ngram_size=2),
        dict(temperature=0.7, seed=5, presence_penalty=1.0, frequency_penalty=0.5, min_new_tokens=4,
             max_new_tokens=12),
        dict(max_new_tokens=24, logit_bias={101: 5.0}),
    ]  # fmt: skip
    requests = [(i, PROMPTS[i % len(PROMPTS)], GenerationOptions(**o)) for i, o in enumerate(options)]
    done, _ = drive(SlotBatch(model, TOK, max_rows=8, prefill_chunk=16), requests)
    for i, (_, p, opts) in enumerate(requests):
        assert_same(done[i], alone(model, p, opts))


def test_stop_strings_and_stop_ids_per_row(model):
    full = alone(model, "Deva is", GenerationOptions(max_new_tokens=20))
    stop = full.text[5:7]
    requests = [
        (0, "Deva is", GenerationOptions(max_new_tokens=20, stop=[stop])),
        (0, "Deva is", GenerationOptions(max_new_tokens=20)),
        (1, "Deva is", GenerationOptions(max_new_tokens=20, stop_token_ids=[full.token_ids[3]])),
    ]
    done, _ = drive(SlotBatch(model, TOK, max_rows=4), requests)
    assert done[0].text == full.text[: full.text.index(stop)] and done[0].finish_reason == "stop"
    assert_same(done[1], full)
    first = full.token_ids.index(full.token_ids[3])  # the row ends where that id first comes
    assert done[2].token_ids == full.token_ids[:first] and done[2].stop_token_id == full.token_ids[3]


def test_a_short_row_joining_a_long_one_finishes_first(model):
    requests = [
        (0, PROMPTS[0], GenerationOptions(max_new_tokens=60)),
        (5, "x", GenerationOptions(max_new_tokens=4)),
    ]
    done, finished_at = drive(SlotBatch(model, TOK, max_rows=2), requests)
    assert finished_at[1] < 12 < finished_at[0]  # the short row ran beside the long one, not after it
    assert_same(done[0], alone(model, *requests[0][1:]))


def test_rows_with_different_options_share_one_forward(model):
    counted = []
    hook = model.register_forward_pre_hook(lambda m, args: counted.append(1))
    try:
        batch = SlotBatch(model, TOK, max_rows=4)
        kinds = [dict(), dict(temperature=0.8, seed=3), dict(temperature=1.2, top_p=0.8, stop=["zz"]),
                 dict(repetition_penalty=1.2)]  # fmt: skip
        opts = [GenerationOptions(max_new_tokens=10, **k) for k in kinds]
        for p, o in zip(PROMPTS, opts):
            batch.add_row(TOK.encode(p), o)
        batch.step()  # four prefills, each picking its row's first token
        assert len(counted) == 4
        counted.clear()
        batch.step()
        assert len(counted) == 1 and all(r.picked == 2 for r in batch.rows.values())
    finally:
        hook.remove()


def test_prefix_cache_reuses_a_shared_prefix_and_gives_the_cold_tokens(model):
    system = "You are a careful assistant. Answer briefly. "  # 45 tokens: two blocks of 16
    cache = PrefixCache(max_tokens=256, block=16)
    batch = SlotBatch(model, TOK, max_rows=2, prefix_cache=cache)
    first = (0, system + "Who is Deva?", GenerationOptions(max_new_tokens=10))
    second = (0, system + "What is 2 + 2?", GenerationOptions(max_new_tokens=10))
    done, _ = drive(batch, [first])
    # The first prompt's three full blocks were stored after its prefill; at its end, with the 9 tokens fed
    # after it (a chat's next turn starts with them), a fourth.
    assert cache.hit_tokens == 0 and cache.tokens == 64
    done2, _ = drive(batch, [second])
    assert cache.hit_tokens == 32  # the two blocks of the shared system prompt
    assert batch.prefill_tokens == len(TOK.encode(first[1])) + len(TOK.encode(second[1])) - 32
    assert_same(done[0], alone(model, *first[1:]))
    assert_same(done2[0], alone(model, *second[1:]))
    again, _ = drive(batch, [first])  # all but the last block, and at least one token, come from the cache
    assert cache.hit_tokens == 32 + 48 and cache.prompt_tokens == 2 * len(first[1]) + len(second[1])
    assert cache.to_dict()["hit_rate"] == round(80 / cache.prompt_tokens, 4)
    assert_same(again[0], done[0])


def test_prefix_cache_is_bounded_and_evicts_least_recent():
    cache = PrefixCache(max_tokens=32, block=16)
    kv = lambda a, b: torch.full((1, 2, 1, b - a, 2), float(a))  # noqa: E731
    cache.store(list(range(40)), kv)  # two blocks
    cache.store(list(range(100, 140)), kv)  # two more: the first prompt's go
    assert cache.tokens == 32
    assert cache.lookup(list(range(40))) is None and cache.lookup(list(range(100, 140))).shape[3] == 32


def test_kv_memory_is_bounded_and_rows_wait_for_room(model):
    batch = SlotBatch(model, TOK, max_rows=4, max_kv_tokens=256)
    opts = GenerationOptions(max_new_tokens=100)
    batch.add_row(TOK.encode("a"), opts)  # one slot of 128 (101 rounded up)
    assert batch.can_admit(1, 100)  # two slots of 128
    batch.add_row(TOK.encode("b"), opts)
    assert not batch.can_admit(1, 100)  # four slots of 128 would exceed 256
    assert batch.shape[0] * batch.shape[1] <= 256
    with pytest.raises(DanluError, match="context"):
        batch.add_row(TOK.encode("c" * 100), GenerationOptions(max_new_tokens=100))


def test_prefix_cache_keeps_a_finished_answer_for_the_next_turn(model):
    cache = PrefixCache(max_tokens=512, block=16)
    batch = SlotBatch(model, TOK, max_rows=2, prefix_cache=cache)
    turn1 = TOK.encode("User: tell me about the red fox and the river. Assistant:")  # 56 tokens
    batch.add_row(turn1, GenerationOptions(max_new_tokens=30))
    while batch.rows:
        (answer,) = [u.done for u in batch.step() if u.done is not None] or [None]
    turn2 = turn1 + list(answer.token_ids) + TOK.encode(" User: and then?")
    before = cache.hit_tokens
    batch.add_row(turn2, GenerationOptions(max_new_tokens=5))
    while batch.rows:
        (done,) = [u.done for u in batch.step() if u.done is not None] or [None]
    fed = len(answer.token_ids) - (answer.finish_reason == "length")  # the last token picked was never fed
    kept = (len(turn1) + fed) // 16 * 16
    assert kept > 48 and cache.hit_tokens - before == kept  # past the prompt's own three blocks
    assert done.token_ids == run(model, TOK, [turn2], GenerationOptions(max_new_tokens=5))[0].token_ids


def test_the_cache_shrinks_back_when_a_long_row_leaves():
    model = wide(GPTConfig.from_name("llama-tiny", vocab_size=258, n_layer=2, n_embd=64, block_size=512))
    batch = SlotBatch(model, TOK, max_rows=8, max_kv_tokens=512)
    rows = {}

    def add(prompt: str, n: int) -> None:
        rows[batch.add_row(TOK.encode(prompt), GenerationOptions(max_new_tokens=n))] = (prompt, n)

    add(PROMPTS[4] * 4, 20)  # 132 + 20 slots: a cache of (1, 256)
    add("x", 60)  # (2, 256)
    assert batch.shape == (2, 256) and not batch.can_admit(8, 20)  # a third slot of 256 would exceed 512
    done = {}
    while 0 in batch.rows:  # the long row runs to its end; the other (60 tokens) decodes on
        done.update({u.row: u.done for u in batch.step() if u.done is not None})
    (first,) = done.values()
    assert batch.can_admit(8, 20)
    add("12 + 3 =", 20)  # into the long row's slot
    assert batch.can_admit(4, 20)  # slots of 128 are enough for every live row now: (4, 128)
    add("Deva", 20)
    assert batch.shape == (4, 128) and len(batch.rows) == 3
    while batch.rows:
        done.update({(u.row, u.done.text): u.done for u in batch.step() if u.done is not None})
    assert_same(first, alone(model, PROMPTS[4] * 4, GenerationOptions(max_new_tokens=20)))
    for prompt, n in [("x", 60), ("12 + 3 =", 20), ("Deva", 20)]:  # "x" was copied into the new cache
        want = alone(model, prompt, GenerationOptions(max_new_tokens=n))
        assert any(c.token_ids == want.token_ids for c in done.values()), prompt


def test_top_logprobs_rows_report_what_they_report_alone(model):
    requests = [(0, PROMPTS[0], GenerationOptions(max_new_tokens=12, top_logprobs=3)),
                (2, PROMPTS[2], GenerationOptions(max_new_tokens=9, temperature=0.8, seed=1, top_logprobs=0)),
                (1, PROMPTS[1], GenerationOptions(max_new_tokens=10))]  # fmt: skip
    done, _ = drive(SlotBatch(model, TOK, max_rows=4), requests)
    for i, (_, p, opts) in enumerate(requests):
        want = alone(model, p, opts)
        assert_same(done[i], want)
        assert done[i].raw_logprobs == pytest.approx(want.raw_logprobs, abs=1e-4)
        assert [[t for t, _ in top] for top in done[i].top_logprobs] == [
            [t for t, _ in top] for top in want.top_logprobs
        ]
    assert len(done[0].top_logprobs[0]) == 3 and done[2].top_logprobs == ()


def test_rows_of_one_prompt_share_one_prefill(model):
    counted = []
    hook = model.register_forward_pre_hook(lambda m, args: counted.append(args[0].shape[1]))
    try:
        opts = [GenerationOptions(max_new_tokens=8, temperature=1.0, seed=i) for i in range(3)]
        done, _ = drive(SlotBatch(model, TOK, max_rows=4), [(0, PROMPTS[2], o) for o in opts])
    finally:
        hook.remove()
    assert sum(t for t in counted if t > 1) == len(TOK.encode(PROMPTS[2]))  # the prompt ran once
    for i, o in enumerate(opts):
        assert_same(done[i], alone(model, PROMPTS[2], o))
