"""danlu BERT vs Hugging Face transformers: same weights, same outputs (fp32, max abs diff < 1e-4)."""

import json

import pytest
import torch
import transformers

from danlu.models.bert import BertForPreTraining, BertForSequenceClassification, BertModel, mean_pool
from danlu.models.checkpoints import load_model, save_model
from danlu.models.hf_bert import config_from_hf, state_dict_from_hf

TOL = 1e-4


def _hf_config(**kw):
    return transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


def _perturbed(model):
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: move every tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _ours(hf_model, head):
    hf_cfg = hf_model.config.to_dict()
    cfg = config_from_hf(hf_cfg)
    cls = {
        "base": BertModel,
        "pretraining": BertForPreTraining,
        "classification": BertForSequenceClassification,
    }
    model = cls[head](cfg)
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), cfg, head))
    return model.eval()


def _batch():
    torch.manual_seed(1)
    input_ids = torch.randint(1, 99, (3, 13))
    attention_mask = torch.ones(3, 13, dtype=torch.long)
    attention_mask[1, 9:] = 0  # right padding, as BERT tokenizers pad
    attention_mask[2, 5:] = 0
    token_type_ids = torch.zeros(3, 13, dtype=torch.long)
    token_type_ids[:, 6:] = 1
    return input_ids, attention_mask, token_type_ids


def test_pretraining_logits_and_loss_match():
    torch.manual_seed(0)
    hf = _perturbed(transformers.BertForPreTraining(_hf_config()))
    ours = _ours(hf, "pretraining")
    input_ids, attention_mask, token_type_ids = _batch()
    labels = torch.full_like(input_ids, -100)
    labels[:, 2] = input_ids[:, 2]
    nsp = torch.tensor([0, 1, 0])
    with torch.no_grad():
        e = hf(input_ids, attention_mask, token_type_ids, labels=labels, next_sentence_label=nsp)
        g = ours(input_ids, attention_mask, token_type_ids, labels=labels, next_sentence_label=nsp)
    real = attention_mask.bool()
    assert (e.prediction_logits[real] - g.logits[real]).abs().max().item() < TOL
    assert (e.seq_relationship_logits - g.nsp_logits).abs().max().item() < TOL
    assert abs(e.loss.item() - g.loss.item()) < TOL


def test_base_model_hidden_states_and_mean_pooling_match():
    torch.manual_seed(0)
    hf = _perturbed(transformers.BertModel(_hf_config()))
    ours = _ours(hf, "base")
    input_ids, attention_mask, token_type_ids = _batch()
    with torch.no_grad():
        e = hf(input_ids, attention_mask, token_type_ids)
        g = ours(input_ids, attention_mask, token_type_ids)
    real = attention_mask.bool()
    assert (e.last_hidden_state[real] - g.hidden_states[real]).abs().max().item() < TOL
    assert (e.pooler_output - g.pooled).abs().max().item() < TOL
    m = attention_mask.unsqueeze(-1).float()
    expected = (e.last_hidden_state * m).sum(1) / m.sum(1)
    assert (mean_pool(g.hidden_states, attention_mask) - expected).abs().max().item() < TOL


def test_classifier_matches_and_round_trips_through_transformers(tmp_path):
    torch.manual_seed(0)
    hf = _perturbed(transformers.BertForSequenceClassification(_hf_config(num_labels=3)))
    ours = _ours(hf, "classification")
    input_ids, attention_mask, token_type_ids = _batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        e = hf(input_ids, attention_mask, token_type_ids, labels=labels)
        g = ours(input_ids, attention_mask, token_type_ids, labels=labels)
    assert (e.logits - g.logits).abs().max().item() < TOL
    assert abs(e.loss.item() - g.loss.item()) < TOL
    # danlu's checkpoint is a Hugging Face BERT folder: transformers loads it, danlu reloads it exactly.
    save_model(ours, tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ck").eval()
    reloaded = load_model(tmp_path / "ck")
    assert isinstance(reloaded, BertForSequenceClassification)
    with torch.no_grad():
        assert (back(input_ids, attention_mask, token_type_ids).logits - g.logits).abs().max().item() < TOL
        assert torch.equal(reloaded(input_ids, attention_mask, token_type_ids).logits, g.logits)


def test_pretraining_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    hf = _perturbed(transformers.BertForPreTraining(_hf_config()))
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert isinstance(ours, BertForPreTraining)
    save_model(ours, tmp_path / "ck")
    back = transformers.BertForPreTraining.from_pretrained(tmp_path / "ck").eval()
    input_ids, attention_mask, token_type_ids = _batch()
    with torch.no_grad():
        e = back(input_ids, attention_mask, token_type_ids)
        g = ours(input_ids, attention_mask, token_type_ids)
    assert (e.prediction_logits - g.logits).abs().max().item() < TOL


@pytest.mark.parametrize("missing", ["bert.encoder.layer.1.output.dense.weight", "cls.predictions.bias"])
def test_missing_tensor_is_named(tmp_path, missing):
    from safetensors.torch import load_file, save_file

    from danlu.errors import DanluError

    hf = transformers.BertForPreTraining(_hf_config())
    hf.save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    sd = load_file(str(f))
    del sd[missing]
    save_file(sd, str(f))
    with pytest.raises(DanluError, match="missing"):
        load_model(tmp_path / "hf")


def test_unsupported_bert_head_is_named(tmp_path):
    from danlu.errors import DanluError

    transformers.BertForTokenClassification(_hf_config()).save_pretrained(tmp_path / "hf")
    with pytest.raises(
        DanluError, match="BERT architecture 'BertForTokenClassification' is not supported; supported"
    ):
        load_model(tmp_path / "hf")


def test_sharded_checkpoint_loads_and_a_missing_shard_is_named(tmp_path):
    from danlu.errors import DanluError

    torch.manual_seed(0)
    hf = _perturbed(transformers.BertModel(_hf_config()))
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    shards = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1
    ours = load_model(tmp_path / "hf")
    input_ids, attention_mask, _ = _batch()
    with torch.no_grad():
        e = hf(input_ids, attention_mask).last_hidden_state
        assert (ours(input_ids, attention_mask).hidden_states - e)[attention_mask.bool()].abs().max() < TOL
    shards[-1].unlink()
    with pytest.raises(
        DanluError,
        match=f"shard\\(s\\) \\['{shards[-1].name}'\\] listed in model.safetensors.index.json are missing",
    ):
        load_model(tmp_path / "hf")
