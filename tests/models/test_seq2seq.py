"""The encoder-decoder Transformer: parity with torch.nn's Transformer layers, masks, KV-cached decoding,
beam search against exhaustive search, and checkpoint round trips."""

import itertools
import math

import pytest
import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.encoder_decoder import beam_decode, greedy_decode
from danlu.models.checkpoints import load_model, save_model
from danlu.models.seq2seq import Seq2SeqConfig, Transformer, shift_right

TOL = 1e-5


def _model(norm_first=False, **kw):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=37, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0, norm_first=norm_first, **kw
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # move LayerNorms off 1/0 so every mapping is exercised
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _torch_reference(model: Transformer) -> tuple[nn.Module, nn.Module]:
    """torch.nn.TransformerEncoder / Decoder holding the same weights."""
    cfg = model.config
    C, H = cfg.n_embd, cfg.intermediate_size
    kw = dict(dim_feedforward=H, dropout=0.0, activation="relu", batch_first=True, norm_first=cfg.norm_first)
    enc_layer = nn.TransformerEncoderLayer(C, cfg.n_head, **kw)
    dec_layer = nn.TransformerDecoderLayer(C, cfg.n_head, **kw)
    enc = nn.TransformerEncoder(
        enc_layer, cfg.n_layer, norm=nn.LayerNorm(C) if cfg.norm_first else None, enable_nested_tensor=False
    )
    dec = nn.TransformerDecoder(
        dec_layer, cfg.n_decoder_layer, norm=nn.LayerNorm(C) if cfg.norm_first else None
    )
    with torch.no_grad():
        for ours, theirs in zip(model.encoder, enc.layers):
            theirs.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
            theirs.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
            theirs.self_attn.out_proj.load_state_dict(ours.attn.proj.state_dict())
            theirs.linear1.load_state_dict(ours.mlp.fc.state_dict())
            theirs.linear2.load_state_dict(ours.mlp.proj.state_dict())
            theirs.norm1.load_state_dict(ours.norm1.state_dict())
            theirs.norm2.load_state_dict(ours.norm2.state_dict())
        for ours, theirs in zip(model.decoder, dec.layers):
            theirs.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
            theirs.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
            theirs.self_attn.out_proj.load_state_dict(ours.attn.proj.state_dict())
            theirs.multihead_attn.in_proj_weight.copy_(torch.cat([ours.cross.q.weight, ours.cross.kv.weight]))
            theirs.multihead_attn.in_proj_bias.copy_(torch.cat([ours.cross.q.bias, ours.cross.kv.bias]))
            theirs.multihead_attn.out_proj.load_state_dict(ours.cross.proj.state_dict())
            theirs.linear1.load_state_dict(ours.mlp.fc.state_dict())
            theirs.linear2.load_state_dict(ours.mlp.proj.state_dict())
            for i in (1, 2, 3):
                getattr(theirs, f"norm{i}").load_state_dict(getattr(ours, f"norm{i}").state_dict())
        if cfg.norm_first:
            enc.norm.load_state_dict(model.encoder_norm.state_dict())
            dec.norm.load_state_dict(model.decoder_norm.state_dict())
    return enc.eval(), dec.eval()


def _batch():
    torch.manual_seed(3)
    src = torch.randint(3, 37, (3, 9))
    src_mask = torch.ones(3, 9, dtype=torch.long)
    src_mask[1, 6:] = 0
    src_mask[2, 3:] = 0
    tgt = torch.randint(3, 37, (3, 7))
    return src, src_mask, tgt


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_matches_torch_transformer_layers(norm_first):
    model = _model(norm_first)
    enc, dec = _torch_reference(model)
    src, src_mask, tgt = _batch()
    C = model.config.n_embd
    pe = model.positions
    with torch.no_grad():
        x = model.embed(src) * math.sqrt(C) + pe[:9]
        y = model.embed(tgt) * math.sqrt(C) + pe[:7]
        pad = src_mask == 0
        memory = enc(x, src_key_padding_mask=pad)
        causal = nn.Transformer.generate_square_subsequent_mask(7)
        out = dec(y, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad)
        expected = out @ model.embed.weight.T
        got = model(src, src_mask, decoder_input_ids=tgt).logits
        got_memory = model.encode(src, src_mask)
    real = src_mask.bool()
    assert (got_memory[real] - memory[real]).abs().max().item() < TOL
    assert (got - expected).abs().max().item() < TOL


def test_padding_does_not_change_the_output():
    model = _model()
    src, _, tgt = _batch()
    with torch.no_grad():
        alone = model(src[:1, :5], decoder_input_ids=tgt[:1]).logits
        padded_src = torch.cat([src[:1, :5], torch.zeros(1, 4, dtype=torch.long)], 1)
        mask = torch.tensor([[1] * 5 + [0] * 4])
        padded = model(padded_src, mask, decoder_input_ids=tgt[:1]).logits
    assert (alone - padded).abs().max().item() < TOL


def test_decoder_is_causal_and_cache_matches():
    model = _model()
    src, src_mask, tgt = _batch()
    with torch.no_grad():
        full = model(src, src_mask, decoder_input_ids=tgt).logits
        changed = tgt.clone()
        changed[:, 4:] = 5
        assert torch.allclose(
            model(src, src_mask, decoder_input_ids=changed).logits[:, :4], full[:, :4], atol=TOL
        )
        memory = model.encode(src, src_mask)
        kv, mask = model.memory_kv(memory), src_mask[:, None, None, :].bool()
        cache = model.new_kv_cache(3, 16)
        steps = [model.decode(tgt[:, :3], kv, mask, cache)]
        steps += [model.decode(tgt[:, i : i + 1], kv, mask, cache) for i in range(3, 7)]
    assert (torch.cat(steps, 1) - full).abs().max().item() < TOL


def test_loss_is_teacher_forced_and_label_smoothed():
    model = _model(label_smoothing=0.1)
    src, src_mask, tgt = _batch()
    labels = tgt.clone()
    labels[0, 5:] = -100
    with torch.no_grad():
        out = model(src, src_mask, labels=labels)
        logits = model(src, src_mask, decoder_input_ids=shift_right(labels, 1, 0)).logits
    assert torch.equal(out.logits, logits)
    expected = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert abs(out.loss.item() - expected.item()) < TOL  # eval mode: no smoothing
    model.train()
    smoothed = model(src, src_mask, labels=labels).loss
    ls = nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1
    )
    assert abs(smoothed.item() - ls.item()) < 1e-4


def _score(model, src, ids):
    """Summed log-probability of ids (ending in EOS) given src."""
    with torch.no_grad():
        logits = model(src, decoder_input_ids=torch.tensor([[1, *ids[:-1]]])).logits
    return torch.log_softmax(logits, -1)[0, torch.arange(len(ids)), torch.tensor(ids)].sum().item()


def test_beam_search_finds_the_exhaustive_best():
    torch.manual_seed(5)
    cfg = Seq2SeqConfig(vocab_size=6, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.embed.weight.mul_(4)  # sharper distributions: greedy and the optimum differ more often
    differs = 0
    for seed in range(6):
        src = torch.randint(3, 6, (1, 4), generator=torch.Generator().manual_seed(seed))
        # Every hypothesis of at most 3 tokens that ends in EOS (id 2); words are 3..5 (and 0, 1).
        hyps = [[*w, 2] for n in range(3) for w in itertools.product([0, 1, 3, 4, 5], repeat=n)]
        best = max(hyps, key=lambda h: _score(model, src, h))
        got = beam_decode(model, src, beam_size=40, max_new_tokens=3, length_penalty=0.0)[0]
        assert got + [2] == best or _score(model, src, got + [2]) >= _score(model, src, best) - 1e-6
        greedy = greedy_decode(model, src, max_new_tokens=3)[0]
        differs += greedy != got
        assert beam_decode(model, src, beam_size=1, max_new_tokens=3, length_penalty=0.0)[0] == greedy
    assert differs  # the test would not tell beam from greedy otherwise


def test_batched_beam_equals_one_by_one():
    model = _model()
    src, src_mask, _ = _batch()
    batched = beam_decode(model, src, src_mask, beam_size=3, max_new_tokens=6)
    single = [beam_decode(model, src[i : i + 1, : int(src_mask[i].sum())], None, 3, 6)[0] for i in range(3)]
    assert batched == single


def test_checkpoint_round_trip(tmp_path):
    model = _model(norm_first=True)
    save_model(model, tmp_path / "ck")
    back = load_model(tmp_path / "ck")
    src, src_mask, tgt = _batch()
    with torch.no_grad():
        assert torch.equal(
            back(src, src_mask, decoder_input_ids=tgt).logits,
            model(src, src_mask, decoder_input_ids=tgt).logits,
        )


def test_bad_configs_are_explained():
    with pytest.raises(DanluError, match="n_embd 30 is not divisible by n_head 4"):
        Seq2SeqConfig(n_embd=30, n_head=4)
    with pytest.raises(DanluError, match="eos_token_id 99 is outside the vocabulary"):
        Seq2SeqConfig(vocab_size=50, eos_token_id=99)
    model = _model()
    with pytest.raises(DanluError, match="longer than the model's block_size=32"):
        model(torch.ones(1, 40, dtype=torch.long), decoder_input_ids=torch.ones(1, 2, dtype=torch.long))
