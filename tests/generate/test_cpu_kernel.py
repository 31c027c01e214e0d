"""danlu's CPU block kernel (generate/cpu_kernels.py): equal to the int8-activation reference, close to the
dequantised weight's product, called inside the compiled decode step, and a clean fallback when it cannot build."""

import pytest
import torch
import torch.nn.functional as F

from danlu.generate import cpu_kernels
from danlu.generate.engine import generate_ids
from danlu.generate.options import GenerationOptions
from danlu.generate.quant_kernels import BlockQuantLinear, pack_int4, quantize_groups, reference_matmul
from danlu.generate.quantize import quantize_model
from danlu.models.gpt import GPT, GPTConfig


@pytest.fixture(autouse=True)
def kernel_on(monkeypatch):
    """The kernel is the default (DANLU_CPU_KERNEL=0 opts out at import): these tests pin it on. Dynamo's caches
    are reset afterwards: its shapes seen here made a later test's compile trace `is_causal` as a SymBool."""
    monkeypatch.setattr(BlockQuantLinear, "kernel_rows", cpu_kernels.MAX_ROWS)
    yield
    torch._dynamo.reset()


def test_the_kernel_is_on_by_default_and_danlu_cpu_kernel_0_opts_out():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DANLU_CPU_KERNEL"}
    code = "from danlu.generate.quant_kernels import BlockQuantLinear as B; print(B.kernel_rows)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(cpu_kernels.MAX_ROWS)
    env["DANLU_CPU_KERNEL"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def random_layer(kind: str, N: int, K: int, gen: torch.Generator) -> BlockQuantLinear:
    """A block layer of random codes (the whole code range, Q8_0's -128 included) and fp16 scales."""
    nb = K // 32
    scale = (torch.rand(N, nb, generator=gen) * 0.05 + 1e-3).half()
    if kind == "Q8_0":
        return BlockQuantLinear(8, torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8), scale)
    q = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    minimum = -8 * scale if kind == "Q4_0" else (torch.randn(N, nb, generator=gen) * 0.1).half()
    return BlockQuantLinear(4, pack_int4(q, 32), scale, minimum)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0", "Q4_0"])
def test_kernel_equals_the_int8_activation_reference(kind):
    gen = torch.Generator().manual_seed(0)
    for N, K, M in ((1, 32, 1), (7, 64, 1), (33, 576, 3), (577, 1536, 2), (130, 96, 8)):  # odd row counts
        layer = random_layer(kind, N, K, gen)
        x = torch.randn(M, K, generator=gen) * torch.rand(M, K, generator=gen) * 3
        x[0, K - 32 :] = 0 if K > 32 else x[0, K - 32 :]  # an all-zero block: scale 0, codes 0
        got = cpu_kernels.block_matmul(x, layer.codes, layer.scale, layer.minimum)
        reference = reference_matmul(x, layer.codes, layer.scale, layer.minimum)
        assert got.shape == (M, N)
        # the same integers; only float summation order differs
        assert torch.allclose(got, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item()), (N, K, M)
        # and within the activation rounding's error of the exact product with the dequantised weight: each
        # element of x moves at most half its block's step dx / 2, so |error| <= sum_g dx_g / 2 * sum |W|
        w = layer.dequantize()
        exact = F.linear(x, w)
        dx = x.view(M, K // 32, 32).abs().amax(-1) / 127  # (M, nb)
        bound = (dx / 2) @ w.abs().view(N, K // 32, 32).sum(-1).T  # (M, N)
        assert ((got - exact).abs() <= bound * 1.001 + 1e-4).all(), (kind, N, K, M)
        assert (got - exact).abs().max() > 0  # the activations really are rounded


def rounded_activations(x: torch.Tensor) -> torch.Tensor:
    """x (M, K) rounded to int8 per block of 32 and back to float: what the kernel multiplies the weight by."""
    xb = x.double().view(x.shape[0], -1, 32)  # (M, nb, 32)
    dx = xb.abs().amax(-1, keepdim=True) / 127
    return (torch.round(xb / dx.clamp(min=1e-30)) * dx).view_as(x)


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_0", "Q8_0"])
def test_kernel_is_the_dequantised_weight_times_the_rounded_activations(kind):
    """Regression: the 4-bit minimum's term used the exact float block sum of x while the scale's term used the
    rounded x, an inconsistent mix whose error carries m * (sum of the block's rounding errors), |m| ~ 8 d;
    on SmolLM2's real activations it was 4-5x the per-layer error of a consistent product (ggml's Q8_1 keeps
    the rounded block's sum for this reason). Now the kernel is exactly W . x_hat."""
    gen = torch.Generator().manual_seed(1)
    layer = random_layer(kind, 96, 576, gen)
    x = torch.randn(3, 576, generator=gen) + 0.5  # a mean: the blocks' sums are far from 0
    got = cpu_kernels.block_matmul(x, layer.codes, layer.scale, layer.minimum).double()
    expected = F.linear(rounded_activations(x), layer.dequantize().double())
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_the_layer_uses_the_kernel_for_few_rows_and_dequantises_for_many(monkeypatch):
    torch.manual_seed(0)
    layer = quantize_groups(torch.randn(40, 64), 4, 32)
    calls = []
    real = cpu_kernels.block_matmul
    monkeypatch.setattr(cpu_kernels, "block_matmul", lambda *a: calls.append(a[0].shape) or real(*a))
    few, many = torch.randn(2, 3, 64), torch.randn(cpu_kernels.MAX_ROWS + 1, 64)
    with torch.inference_mode():
        reference = reference_matmul(few.view(6, 64), layer.codes, layer.scale, layer.minimum)
        assert torch.allclose(layer(few).view(6, 40), reference, atol=1e-4)  # the kernel's int8 arithmetic
        assert torch.allclose(layer(many), F.linear(many, layer.dequantize()), atol=1e-4)  # exact path
    assert calls == [(6, 64)]
    x = torch.randn(1, 64, requires_grad=True)
    layer(x).sum().backward()  # a gradient wanted: the dequantising path, which has one
    assert x.grad is not None and len(calls) == 1


def tiny_blocks(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig.from_name("llama-tiny", vocab_size=96, n_layer=2, n_embd=64, block_size=64)
    return quantize_model(GPT(cfg).eval(), bits=4, group_size=32)


def test_compiled_step_calls_the_kernel_and_equals_eager():
    model = tiny_blocks()
    assert any(isinstance(m, BlockQuantLinear) for m in model.modules())
    ids = torch.randint(0, 96, (1, 5), generator=torch.Generator().manual_seed(3))
    opts = GenerationOptions(max_new_tokens=12)
    with torch.inference_mode():
        logits = model(ids[:, :1]).logits
        graph = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: no break at the op
        assert torch.allclose(graph(ids[:, :1]).logits, logits, atol=1e-5)
        eager = list(generate_ids(model, ids, torch.ones_like(ids), opts, [], compile=False))
        compiled = list(generate_ids(model, ids, torch.ones_like(ids), opts, [], compile=True))
    assert [int(t) for t in compiled] == [int(t) for t in eager]


def test_fused_gate_up_equals_the_two_layers(monkeypatch):
    import copy

    from danlu.generate.quant_kernels import FusedGatedMLP, fuse_gate_up

    model = tiny_blocks(1)
    fused = copy.deepcopy(model)
    assert fuse_gate_up(fused) == 2 and isinstance(fused.blocks[0].mlp, FusedGatedMLP)
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        # through the kernel each output row is its own dot product: the fused rows are the same numbers
        assert torch.equal(fused(ids).logits, model(ids).logits)
        monkeypatch.setattr(BlockQuantLinear, "kernel_rows", 0)  # dequantised weights, float activations
        assert torch.allclose(fused(ids).logits, model(ids).logits, atol=1e-5)
        monkeypatch.setattr(BlockQuantLinear, "kernel_rows", cpu_kernels.MAX_ROWS)
        opts = GenerationOptions(max_new_tokens=8)
        one = list(generate_ids(model, ids, torch.ones_like(ids), opts, [], compile=True))
        two = list(generate_ids(fused, ids, torch.ones_like(ids), opts, [], compile=True))
    assert [int(t) for t in one] == [int(t) for t in two]


def test_falls_back_with_one_message_when_the_kernel_cannot_build(monkeypatch, capsys):
    def no_compiler() -> None:
        raise RuntimeError("Error building extension 'danlu_cpu_kernels': g++: not found")

    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setattr(cpu_kernels, "_build", no_compiler)
    torch.manual_seed(0)
    layer = quantize_groups(torch.randn(16, 64), 8, 32)
    x = torch.randn(1, 64)
    with torch.inference_mode():
        for _ in range(3):
            assert torch.allclose(layer(x), F.linear(x, layer.dequantize()), atol=1e-4)  # today's exact path
    err = capsys.readouterr().err
    assert err.count("danlu: the CPU block kernel is off") == 1 and "g++: not found" in err
    assert cpu_kernels._state == {"ok": False, "why": cpu_kernels._state["why"]}
