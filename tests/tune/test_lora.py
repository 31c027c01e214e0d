"""LoRA: parity with PEFT on the matching transformers model, training only A and B, merge / unmerge,
adapter save / load, and a clear error for a target that matches nothing."""

import json

import pytest
import torch
import transformers

from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.tune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    available_targets,
    load_adapter,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)


def _randomise_lora(model, seed=1):
    """Non-zero B (a fresh LoRA is the identity), so the parity tests compare real bypasses."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                for p in list(m.lora_A.values()) + list(m.lora_B.values()):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize(
    "preset, targets, hf_modules",
    [
        ("llama-tiny", ["q", "v"], {"q_proj", "v_proj"}),
        ("llama-tiny", ["qkv", "o", "mlp.down"], {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}),
        ("gpt2-tiny", ["q", "v", "mlp.fc"], {"c_attn", "c_fc"}),
    ],
)
def test_peft_loads_a_danlu_adapter_and_gives_the_same_logits(
    tmp_path, make_gpt, preset, targets, hf_modules
):
    from peft import PeftModel

    model = make_gpt(preset).eval()
    save_model(model, tmp_path / "base")  # an HF directory transformers loads
    cfg = LoRAConfig(r=4, alpha=8, targets=targets)
    apply_lora(model, cfg)
    _randomise_lora(model)
    model.eval()
    from danlu.tune.lora import save_adapter

    save_adapter(model, tmp_path / "adapter", cfg)
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(conf["target_modules"]) == hf_modules
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = torch.randint(0, model.config.vocab_size, (2, 13))
    with torch.no_grad():
        ours, theirs = model(x).logits, peft_model(input_ids=x).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    with peft_model.disable_adapter(), torch.no_grad():  # and the adapter really changes the output
        assert (peft_model(input_ids=x).logits - ours).abs().max().item() > 1e-3


def test_q_and_v_parts_write_only_their_rows_of_the_fused_qkv(make_gpt):
    model = make_gpt("llama-tiny")
    apply_lora(model, LoRAConfig(r=2, targets=["q", "v"]))
    _randomise_lora(model)
    layer = model.blocks[0].attn.qkv
    C, hs, nkv = 32, 8, 2
    assert layer.rows == {"q": (0, C), "v": (C + nkv * hs, C + 2 * nkv * hs)}
    x = torch.randn(3, C)
    delta = layer(x) - layer.base(x)
    assert delta[:, C : C + nkv * hs].abs().max() == 0  # k untouched
    assert delta[:, :C].abs().max() > 0 and delta[:, C + nkv * hs :].abs().max() > 0


def test_only_a_and_b_train(make_gpt):
    model = make_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = apply_lora(model, LoRAConfig(r=4, targets=["q", "v"]))
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, model.config.vocab_size, (2, 9))
    for _ in range(3):
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    after = merge_and_unload(model).state_dict()
    unmerged_names = [k for k in before if "qkv" not in k]
    assert all(torch.equal(before[k], after[k]) for k in unmerged_names)  # everything else frozen
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])


def test_merge_then_unmerge(make_gpt):
    model = make_gpt("gpt2-tiny").eval()
    W = model.blocks[1].attn.qkv.weight.clone()
    apply_lora(model, LoRAConfig(r=4, alpha=4, targets=["q", "v", "attn.proj"]))
    _randomise_lora(model)
    x = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        bypass = model(x).logits
        merge_lora(model)
        merged = model(x).logits
        assert not torch.equal(model.blocks[1].attn.qkv.base.weight, W)
        unmerge_lora(model)
        assert torch.allclose(model.blocks[1].attn.qkv.base.weight, W, atol=1e-6)
        assert torch.allclose(model(x).logits, bypass, atol=1e-5)
    assert torch.allclose(merged, bypass, atol=1e-4)


def test_adapter_round_trip_alone(tmp_path, make_gpt):
    from danlu.tune.lora import save_adapter

    model = make_gpt("llama-tiny").eval()
    apply_lora(model, LoRAConfig(r=4, targets=["q", "k", "mlp.up"]))
    _randomise_lora(model)
    save_adapter(model, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    fresh = make_gpt("llama-tiny").eval()  # same seed: the same base weights
    cfg = load_adapter(fresh, tmp_path / "a")
    assert cfg.r == 4 and set(cfg.targets) == {"q_proj", "k_proj", "up_proj"}
    x = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        assert torch.allclose(fresh(x).logits, model(x).logits, atol=1e-6)


def test_a_target_matching_nothing_lists_the_available_names(make_gpt):
    model = make_gpt("llama-tiny")
    with pytest.raises(DanluError, match="'c_proj' matches no linear layer") as e:
        apply_lora(model, LoRAConfig(targets=["q", "c_proj"]))
    for name in ("q", "v", "attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.down"):
        assert name in str(e.value)
    assert "attn.qkv" in available_targets(model)


def test_bad_lora_settings():
    with pytest.raises(DanluError, match="rank r must be >= 1"):
        LoRAConfig(r=0)
    with pytest.raises(DanluError, match="at least one target"):
        LoRAConfig(targets="")


def test_danlu_loads_an_adapter_peft_wrote(tmp_path, make_gpt):
    from peft import LoraConfig, get_peft_model

    model = make_gpt("llama-tiny").eval()
    save_model(model, tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    torch.manual_seed(3)
    peft_model = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"],
                                               init_lora_weights=False)).eval()  # fmt: skip
    peft_model.save_pretrained(tmp_path / "peft")
    load_adapter(model, tmp_path / "peft")
    x = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert (model(x).logits - peft_model(input_ids=x).logits).abs().max().item() < 1e-4


def test_lifecycle_wrap_copy_finish_load(tmp_path, make_gpt):
    """The one lifecycle SFT, DPO and PPO share: wrap -> merged copy mid-run -> save adapter + merge -> load."""
    from danlu.tune.lora import finish_lora, lora_layers, merged_copy, wrap_lora

    base = make_gpt("llama-tiny").eval()
    assert wrap_lora(base, None) is base and not lora_layers(base)  # no config: nothing changes
    assert merged_copy(base) is base and finish_lora(base, None, tmp_path / "none") is None
    model = make_gpt("llama-tiny").eval()
    cfg = LoRAConfig(r=4, alpha=8, targets=["q", "v"])
    wrap_lora(model, cfg)
    _randomise_lora(model)
    x = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        want = model(x).logits
        copy = merged_copy(model)
        assert lora_layers(model) and not lora_layers(copy)  # the trained model keeps its adapters
        torch.testing.assert_close(copy(x).logits, want, atol=1e-5, rtol=1e-5)
        adapter = finish_lora(model, cfg, tmp_path / "adapter")
        assert adapter == tmp_path / "adapter" and (adapter / "adapter_model.safetensors").is_file()
        assert not lora_layers(model)
        torch.testing.assert_close(model(x).logits, want, atol=1e-5, rtol=1e-5)
        load_adapter(base, adapter)  # base: same init as `model` before LoRA (make_gpt is seeded)
        torch.testing.assert_close(base(x).logits, want, atol=1e-5, rtol=1e-5)
