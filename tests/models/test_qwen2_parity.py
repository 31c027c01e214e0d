"""Qwen2 (LLaMA with q/k/v biases): a Hugging Face folder loads into danlu's GPT with the same logits, and danlu's
export loads back into transformers as Qwen2ForCausalLM."""

import torch
import transformers

from danlu.models.checkpoints import load_model, save_model

TOL = 1e-4


def test_qwen2_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: move every tensor
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert ours.config.qkv_bias and not ours.config.bias
    x = torch.randint(0, 101, (2, 15))
    with torch.no_grad():
        expected = hf(x).logits
        assert (ours(x).logits - expected).abs().max().item() < TOL
        save_model(ours, tmp_path / "ck")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
        assert type(back).__name__ == "Qwen2ForCausalLM"
        assert (back(x).logits - expected).abs().max().item() < TOL
