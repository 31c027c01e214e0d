"""Decoding steps through the model's one forward equal the full no-cache forward (GPT-2 and LLaMA shapes,
left-padded batches), rollback and reorder behave, and the CUDA-graph step function traces as one graph (checked
on CPU with dynamo)."""

import pytest
import torch

from danlu.generate import steps
from danlu.generate.static import decode_one_static
from danlu.models.gpt import GPT, GPTConfig
from danlu.nn.attention import one_query_attention

TOL = 1e-4


@pytest.fixture(params=["gpt2-tiny", "llama-tiny"], scope="module")
def model(request):
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name(request.param, vocab_size=97, n_layer=2, n_embd=64, block_size=64)).eval()


def padded_batch():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 97, (3, 7), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0
    attention_mask[2, :6] = 0  # a one-token prompt
    return input_ids, attention_mask


@pytest.mark.parametrize("n_head, n_kv_head", [(4, 4), (9, 3), (4, 1)])
def test_one_query_attention_equals_sdpa(n_head, n_kv_head):
    """The written-out attention of the compiled CPU step is PyTorch's SDPA (GQA, key mask with holes)."""
    g = torch.Generator().manual_seed(n_head)
    B, S, hs = 3, 11, 16
    q = torch.randn(B, n_head, 1, hs, generator=g)
    keys, values = (torch.randn(B, n_kv_head, S, hs, generator=g) for _ in range(2))
    mask = torch.rand(B, 1, 1, S, generator=g) > 0.4
    mask[..., -1] = True  # the new token's own slot is always real
    for m in (mask, None):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, keys, values, attn_mask=m, enable_gqa=True
        )
        got = one_query_attention(q, keys, values, m)  # (B, n_head, 1, hs)
        assert (got - expected).abs().max() < 1e-5


@torch.inference_mode()
def test_prefill_and_decode_equal_full_forward(model):
    input_ids, attention_mask = padded_batch()
    state = steps.new_state(model, 3, 16)
    logits = steps.prefill(model, state, input_ids, attention_mask)
    new = torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(1))
    got = [logits]
    for t in range(4):
        got.append(steps.decode_one(model, state, new[:, t]))
    full_ids = torch.cat([input_ids, new], 1)
    full_mask = torch.cat([attention_mask, torch.ones_like(new)], 1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
    expected = model(full_ids, attention_mask=full_mask, position_ids=position_ids).logits[:, 6:]
    assert (torch.stack(got, 1) - expected).abs().max() < TOL
    assert state.length == 11 and state.next_pos.tolist() == [8, 11, 5]


@torch.inference_mode()
def test_forward_tokens_and_rollback(model):
    input_ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    ones = torch.ones_like(input_ids)
    state = steps.new_state(model, 1, 20)
    steps.prefill(model, state, input_ids, ones)
    several = steps.forward_tokens(model, state, torch.tensor([[5, 6, 7]]))  # (1, 3, V)
    expected = model(torch.cat([input_ids, torch.tensor([[5, 6, 7]])], 1)).logits[:, 5:]
    assert (several - expected).abs().max() < TOL
    steps.rollback(state, 6)  # keep token 5, forget 6 and 7
    assert state.length == 6 and not state.key_mask[0, 6:].any()
    again = steps.decode_one(model, state, torch.tensor([9]))
    expected = model(torch.cat([input_ids, torch.tensor([[5, 9]])], 1)).logits[:, -1]
    assert (again - expected).abs().max() < TOL


@torch.inference_mode()
def test_reorder_moves_rows(model):
    input_ids, attention_mask = padded_batch()
    state = steps.new_state(model, 3, 12)
    steps.prefill(model, state, input_ids, attention_mask)
    steps.reorder(state, torch.tensor([1, 1, 0]))
    out = steps.decode_one(model, state, torch.tensor([4, 4, 4]))
    assert torch.allclose(out[0], out[1])
    alone = steps.new_state(model, 1, 12)
    steps.prefill(model, alone, input_ids[:1, 3:], attention_mask[:1, 3:])
    assert (steps.decode_one(model, alone, torch.tensor([4])) - out[2]).abs().max() < TOL


@torch.inference_mode()
def test_static_step_traces_as_one_graph(model):
    """`decode_one_static` is what CUDA compiles with mode="reduce-overhead": dynamo must capture it whole
    (fullgraph=True raises on any graph break), and it must compute what the eager step computes."""
    input_ids, attention_mask = padded_batch()
    eager, static = steps.new_state(model, 3, 12), steps.new_state(model, 3, 12)
    tok = steps.prefill(model, eager, input_ids, attention_mask).argmax(-1)
    steps.prefill(model, static, input_ids, attention_mask)
    torch._dynamo.reset()
    fn = torch.compile(decode_one_static, fullgraph=True, dynamic=False, backend="eager")
    for _ in range(3):
        expected = steps.decode_one(model, eager, tok)
        slot = torch.tensor([static.length])
        got = fn(model, static.cache, static.key_mask, tok[:, None], static.next_pos[:, None], slot)
        static.length += 1
        static.next_pos += 1
        assert (got - expected).abs().max() < TOL
        tok = expected.argmax(-1)


@torch.inference_mode()
def test_graph_state_reuses_its_buffers_and_decodes_like_eager(model, monkeypatch):
    """The CUDA-graph state (run here with the eager step function in place of the compiled one): buffers are
    rounded to 256 slots, kept per shape and reused by the next call, and a reused state starts clean."""
    monkeypatch.setattr(steps, "compiled_decode_one", lambda m: decode_one_static)
    input_ids, attention_mask = padded_batch()

    def run(state):
        tok = steps.prefill(model, state, input_ids, attention_mask).argmax(-1)
        out = []
        for _ in range(4):
            tok = steps.decode_one(model, state, tok).argmax(-1)
            out.append(tok)
        return torch.stack(out, 1)

    first = steps._graph_state(model, 3, 20, torch.device("cpu"))
    assert first.max_len == 64 and first.decode_fn is decode_one_static  # min(256, block_size 64)
    got = run(first)
    second = steps._graph_state(model, 3, 30, torch.device("cpu"))
    assert second.cache is first.cache and not second.key_mask.any()
    assert torch.equal(run(second), got)
    assert torch.equal(run(steps.new_state(model, 3, 20)), got)


def test_compiled_cpu_decoding_equals_eager_and_follows_weight_updates():
    """compile=True on CPU (inductor, real compilation): the same greedy tokens as eager decoding for a padded
    batch, and after the weights change in place (training after a compiled decode) the compiled step uses the new weights."""
    from danlu.generate.engine import generate_ids
    from danlu.generate.options import GenerationOptions

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=97, n_layer=2, n_embd=64, block_size=64)).eval()
    input_ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(input_ids)
    mask[1, :2] = 0  # a left-padded row: the compiled one-query attention must mask its padding
    opts = GenerationOptions(max_new_tokens=8)

    def run(compile: bool) -> torch.Tensor:
        with torch.inference_mode():
            return torch.stack(list(generate_ids(model, input_ids, mask, opts, [], compile=compile)), 1)

    before = run(True)
    assert torch.equal(before, run(False))
    with torch.no_grad():
        model.norm_f.weight.mul_(-1.0)  # negates the logits: a stale (frozen) compile would not notice
    after = run(True)
    assert torch.equal(after, run(False)) and not torch.equal(after, before)


def test_compiled_steps_of_different_models_interleave():
    """After a state's first compiled step, later steps check only the guards that tell compiled variants apart
    (`steps.decode_one`). Two models decoding turn about, each its own compiled variant, must still each run
    their own: the same logits as eager decoding at every step."""
    torch.manual_seed(0)
    models = [
        GPT(GPTConfig.from_name(name, vocab_size=97, n_layer=n, n_embd=64, block_size=64)).eval()
        for name, n in (("llama-tiny", 2), ("gpt2-tiny", 3))
    ]
    g = torch.Generator().manual_seed(4)
    input_ids, fed = torch.randint(0, 97, (1, 5), generator=g), torch.randint(0, 97, (10, 1), generator=g)

    def turn_about(compile: bool) -> list[torch.Tensor]:
        states = [steps.new_state(m, 1, 30, compile=compile) for m in models]
        for m, s in zip(models, states):
            steps.prefill(m, s, input_ids, torch.ones_like(input_ids))
        return [steps.decode_one(m, s, tok) for tok in fed for m, s in zip(models, states)]

    with torch.inference_mode():
        eager, compiled = turn_about(False), turn_about(True)
    assert all((c - e).abs().max() < TOL for c, e in zip(compiled, eager))
    assert (eager[0] - eager[1]).abs().max() > 0.1  # the two models' logits really differ


def test_one_forward_only():
    """No second decoding forward, cache class or mask builder: the compiled step calls the model's forward."""
    from danlu.generate import static  # `import danlu.generate.static` would read the function danlu.generate
    from danlu.nn.attention import KVCache

    for gone in ("gpt_forward", "_attend_one_query", "StaticKVCache", "_norm"):
        assert not hasattr(static, gone), gone
    assert not hasattr(steps, "_mask")
    assert KVCache.__subclasses__() == []


@torch.inference_mode()
def test_compiled_cpu_step_runs_the_model_forward_with_one_query_attention(model):
    """The step as `steps.decode_one` compiles it on CPU (attended length dynamic), captured by dynamo: the
    "auto" backend writes attention out instead of calling SDPA, and every step's logits equal the eager
    forward's on the whole left-padded sequence."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    fn = torch.compile(decode_one_static, backend=capture, fullgraph=True, dynamic=None)
    input_ids, attention_mask = padded_batch()
    state = steps.new_state(model, 3, 12)
    tok = steps.prefill(model, state, input_ids, attention_mask).argmax(-1)
    fed, got = [], []
    for _ in range(3):
        key_mask = state.key_mask[:, : state.length + 1]
        torch._dynamo.mark_dynamic(key_mask, 1)
        slot = torch.tensor([state.length])
        got.append(fn(model, state.cache, key_mask, tok[:, None], state.next_pos[:, None], slot))
        state.length += 1
        state.next_pos += 1
        fed.append(tok)
        tok = got[-1].argmax(-1)
    assert len(graphs) == 1 and "scaled_dot_product_attention" not in graphs[0]
    full_ids = torch.cat([input_ids, torch.stack(fed, 1)], 1)
    full_mask = torch.cat([attention_mask, torch.ones(3, 3, dtype=torch.long)], 1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
    expected = model(full_ids, attention_mask=full_mask, position_ids=position_ids).logits[:, 7:]
    assert (torch.stack(got, 1) - expected).abs().max() < TOL
