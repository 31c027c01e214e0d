"""The seq2seq and BERT runs end to end on a tiny world (a few steps: the paths, files and metrics, not the
quality, which `danlu demo` reports), their demo stages and their commands."""

import argparse
import json
from pathlib import Path

import pytest
import torch

from danlu.cli import models as commands
from danlu.data.world import write_world
from danlu.errors import DanluError
from danlu.models.bert import BertForPreTraining, BertForSequenceClassification
from danlu.models.checkpoints import load_model
from danlu.models.seq2seq import Transformer
from danlu.recipes.bert import encode_pair, split_sentences, stage_bert, train_tokenizer
from danlu.recipes.demo import DemoContext
from danlu.recipes.seq2seq import stage_seq2seq


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, seed=0, size="tiny")
    return out


def _ctx(tmp_path, world, **args):
    a = argparse.Namespace(device="cpu", seed=0, quiet=True, **args)
    return DemoContext(out=tmp_path, args=a, state={"world_dir": world})


def _cli(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_seq2seq_stage_and_commands(tmp_path, world, capsys):
    torch.set_num_threads(1)
    ctx = _ctx(tmp_path, world, seq2seq_steps=20, seq2seq_denoise_steps=4, seq2seq_batch_size=8)
    metrics = stage_seq2seq(ctx)
    assert {"bleu", "bleu_greedy", "final_val_loss", "denoise_final_val_loss"} <= set(metrics)
    assert 0 <= metrics["bleu"] <= 100 and metrics["test_pairs"] > 0
    assert "Seq2seq translation" in ctx.sections[0] and "BLEU" in ctx.sections[0]
    ck = tmp_path / "seq2seq" / "translate" / "checkpoint"
    assert isinstance(load_model(ck), Transformer)
    assert (tmp_path / "seq2seq" / "denoise" / "metrics.jsonl").is_file()
    capsys.readouterr()
    _cli(["seq2seq", "translate", "--model", str(ck), "--num-beams", "2", "Zovelan is a city."])
    line = capsys.readouterr().out.strip()
    assert line.startswith("Zovelan is a city.\t")
    with pytest.raises(DanluError, match="holds a Transformer, not a BertModel"):
        _cli(["bert", "embed", "--model", str(ck), "hello"])


def test_bert_stage_and_commands(tmp_path, world, capsys):
    torch.set_num_threads(1)
    ctx = _ctx(tmp_path, world, bert_steps=10, bert_finetune_steps=5, bert_batch_size=8)
    metrics = stage_bert(ctx)
    assert {"mlm_accuracy", "nsp_accuracy", "accuracy", "macro_f1"} <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in ("mlm_accuracy", "nsp_accuracy", "accuracy", "macro_f1"))
    assert isinstance(load_model(tmp_path / "bert" / "pretrain" / "checkpoint"), BertForPreTraining)
    clf = load_model(tmp_path / "bert" / "classify" / "checkpoint")
    assert isinstance(clf, BertForSequenceClassification)
    labels = json.loads((tmp_path / "bert" / "classify" / "checkpoint" / "config.json").read_text())[
        "id2label"
    ]
    assert sorted(labels.values()) == ["animals", "numbers", "people", "places"]
    capsys.readouterr()
    _cli(["bert", "embed", "--model", str(tmp_path / "bert" / "pretrain" / "checkpoint"), "a cat", "a dog"])
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 and rows[0].split()[0] == "1.000"


def test_sentences_and_segment_encoding():
    assert split_sentences("Ana is here. She sleeps.\n安娜在这里。她睡觉。") == [
        "Ana is here.",
        "She sleeps.",
        "安娜在这里。",
        "她睡觉。",
    ]
    tok = train_tokenizer(["hello world. the cat sat on the mat."] * 20, vocab_size=300)
    ids, types = encode_pair(tok, "hello world " * 20, "the cat", max_len=16)
    assert len(ids) == 16 and ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
    sep = ids.index(tok.token_to_id("[SEP]"))
    assert types == [0] * (sep + 1) + [1] * (16 - sep - 1)
    assert tok.decode(ids[sep + 1 : -1]) == "the cat"  # the longer segment was cut, not the short one
