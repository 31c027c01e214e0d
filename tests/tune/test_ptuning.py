"""P-tuning: the virtual tokens are prepended to the input, only the prompt encoder trains, generation works
through the wrapper, and the encoder saves and loads alone."""

import torch

from danlu.models.gpt import GPT
from danlu.train.loop import TrainConfig
from danlu.tune.ptuning import PromptEncoder, PTuningConfig, PTuningModel
from danlu.tune.sft import sft


def test_forward_equals_the_gpt_on_prepended_virtual_embeddings(make_gpt):
    gpt = make_gpt().eval()
    model = PTuningModel(gpt, PTuningConfig(n_virtual=5)).eval()
    x = torch.randint(0, gpt.config.vocab_size, (2, 7))
    with torch.no_grad():
        virtual = model.encoder()  # (5, C)
        assert virtual.shape == (5, gpt.config.n_embd)
        embeds = torch.cat([virtual.expand(2, 5, -1), gpt.wte(x)], dim=1)
        expected = gpt(None, inputs_embeds=embeds).logits[:, 5:]
        assert torch.allclose(model(x).logits, expected, atol=1e-6)
    assert model.config.block_size == gpt.config.block_size - 5


def test_bilstm_mlp_encoder_shape():
    enc = PromptEncoder(n_virtual=4, C=24, hidden=16)
    assert enc.lstm.bidirectional and enc.lstm.num_layers == 2
    assert enc().shape == (4, 24)


def test_only_the_prompt_encoder_trains_and_it_learns(world, tokenizer, make_gpt, tmp_path):
    # A base that knows the chat format (from translation replies); P-tuning then steers it toward arithmetic.
    gpt = make_gpt()
    cfg = TrainConfig(max_steps=40, batch_size=8, block_size=72, lr=1e-2, warmup_steps=2, eval_interval=40,
                      eval_batches=1, show_progress=False, weight_decay=0.0)  # fmt: skip
    base = [r for r in world.sft_records("train") if r["kind"] == "translate"][:16]
    sft(gpt, tokenizer, base, tmp_path / "base", cfg, val_records=base)
    frozen = {k: v.clone() for k, v in gpt.state_dict().items()}
    records = [r for r in world.sft_records("train") if r["kind"] == "arith"][:6]
    result = sft(gpt, tokenizer, records, tmp_path / "pt", cfg, val_records=records, ptuning=PTuningConfig(8))
    model = result.model
    assert isinstance(model, PTuningModel)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.") for n in trainable)
    assert all(torch.equal(frozen[k], v) for k, v in gpt.state_dict().items())
    assert result.summary["final_val_loss"] < result.summary["first_val_loss"] - 0.05

    # Generation goes through the wrapper (prefill with the virtual tokens, then the KV cache).
    import danlu
    from danlu.tune.sft import prompt_text

    prompt = prompt_text(records[0], tokenizer)
    out = danlu.generate(model, tokenizer, prompt, max_new_tokens=6)
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():  # greedy by hand, without a cache
        for _ in range(6):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            if nxt.item() == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, nxt], dim=1)
    by_hand = tokenizer.decode(ids[0, len(tokenizer.encode(prompt)) :].tolist(), skip_special_tokens=True)
    assert out == by_hand

    # The encoder alone saves and reloads onto the same base model.
    again = PTuningModel.load(gpt, result.extras["prompt_encoder"])
    x = torch.randint(0, gpt.config.vocab_size, (1, 5))
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)
    assert isinstance(again.gpt, GPT)
