"""Pretraining from memory-mapped token shards: the same batches as the in-memory tensor (so exact resume and
DDP equivalence carry over), exact resume through the loop, mixture weights, the on-the-fly cache, bad --data."""

import json

import numpy as np
import pytest
import torch

from danlu.cli import main
from danlu.data.corpus import cache_root, load_token_splits, parse_data_specs
from danlu.data.datasets import Mixture, sample_blocks
from danlu.data.prepare import PrepareOptions, prepare
from danlu.data.shards import TokenStream
from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer
from danlu.train.loop import TrainConfig, train


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DANLU_CACHE_DIR", str(tmp_path / "cache"))


def _corpus(tmp_path, world, name="c.jsonl", texts=None):
    path = tmp_path / name
    texts = texts if texts is not None else world.pretrain_texts("train")
    path.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    return path


def _shards(tmp_path, world, tokenizer):
    corpus = _corpus(tmp_path, world)
    prepare([corpus], tokenizer, tmp_path / "shards", PrepareOptions(shard_tokens=700, show_progress=False))
    return TokenStream(tmp_path / "shards", "train")


def test_shard_batches_equal_tensor_batches(tmp_path, world, tokenizer):
    stream = _shards(tmp_path, world, tokenizer)
    assert len(stream.maps) > 10  # many shards: blocks cross their boundaries
    tensor = torch.from_numpy(stream.read(0, stream.n_tokens))
    for step, micro in [(0, 0), (5, 1), (123, 0)]:
        want = sample_blocks(tensor, 8, 64, 7, step, micro)
        assert torch.equal(sample_blocks(stream, 8, 64, 7, step, micro), want)
        halves = [sample_blocks(stream, 8, 64, 7, step, micro, rank, 2) for rank in (0, 1)]
        assert torch.equal(torch.cat(halves), want)  # DDP: each rank its slice of the same global batch


def test_resume_from_shards_is_exact(tmp_path, world, tokenizer):
    stream = _shards(tmp_path, world, tokenizer)
    cfg = TrainConfig(max_steps=8, batch_size=4, block_size=16, lr=5e-3, warmup_steps=2, eval_interval=4,
                      eval_batches=2, ckpt_interval=4, show_progress=False)  # fmt: skip

    def setup():
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=32,
                                        n_head=4, n_kv_head=2, block_size=32))  # fmt: skip
        return model, lambda split, step, micro: {"input_ids": (x := sample_blocks(stream, 4, 16, 0, step, micro)),
                                                  "labels": x}  # fmt: skip

    full = train(*setup(), cfg, tmp_path / "full", save_fn=save_model)

    class Killed(Exception):
        pass

    def kill_at_6(step, record):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(*setup(), cfg, tmp_path / "cut", save_fn=save_model, on_step=kill_at_6)
    resumed = train(*setup(), cfg, tmp_path / "cut", save_fn=save_model, resume=True)
    assert resumed["final_train_loss"] == full["final_train_loss"]
    assert resumed["final_val_loss"] == full["final_val_loss"]


def test_mixture_weights_are_respected():
    a = torch.arange(0, 1000)  # ids < 1000: source a
    b = torch.arange(5000, 9000)  # ids >= 5000: source b
    mix = Mixture([a, b], [0.7, 0.3], ["a", "b"])
    rows = torch.cat([sample_blocks(mix, 32, 8, 3, step, 0) for step in range(200)])  # 6400 blocks
    from_a = (rows[:, 0] < 1000).float().mean().item()
    assert abs(from_a - 0.7) < 0.03, from_a
    assert ((rows < 1000).all(1) | (rows >= 5000).all(1)).all()  # a block never mixes two sources
    assert torch.equal(
        sample_blocks(mix, 32, 8, 3, 9, 1), sample_blocks(mix, 32, 8, 3, 9, 1)
    )  # pure function
    halves = [sample_blocks(mix, 32, 8, 3, 9, 1, rank, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), sample_blocks(mix, 32, 8, 3, 9, 1))
    with pytest.raises(DanluError, match="mixture weight of b is 0"):
        Mixture([a, b], [1.0, 0.0], ["a", "b"])


def test_data_specs():
    assert parse_data_specs(["x.jsonl", "y.txt"]) == [(["x.jsonl", "y.txt"], None)]
    assert parse_data_specs(["web=0.7", "books/=0.3"]) == [(["web"], 0.7), (["books/"], 0.3)]
    for bad, needle in [(["a=0"], "weight 0.0 must be a positive"), (["a=-1"], "must be a positive"),
                        (["a=x"], "must be a number"), (["a=1", "b"], "mixes weighted")]:  # fmt: skip
        with pytest.raises(DanluError, match=needle):
            parse_data_specs(bad)


def test_plain_files_are_cached_and_refreshed(tmp_path, world, tokenizer):
    corpus = _corpus(tmp_path, world)
    first = load_token_splits([corpus], tokenizer, 32)
    assert first["train"].n_tokens > 0 and first["val"].n_tokens > 0  # 5% held out by hash
    folders = list(cache_root().iterdir())
    index_mtime = (first["train"].folder / "index.json").stat().st_mtime_ns
    again = load_token_splits([corpus], tokenizer, 32)
    assert again["train"].folder == first["train"].folder and list(cache_root().iterdir()) == folders
    assert (again["train"].folder / "index.json").stat().st_mtime_ns == index_mtime  # reused, not redone
    _corpus(tmp_path, world, texts=world.pretrain_texts("train")[:100])  # the file changes: prepared anew
    changed = load_token_splits([corpus], tokenizer, 32)
    assert changed["train"].folder != first["train"].folder
    assert changed["train"].n_tokens + changed["val"].n_tokens < first["train"].n_tokens


def _pretrain(capsys, tmp_path, tok_dir, *data):
    code = main(["pretrain", "--data", *map(str, data), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "run"),
                 "--preset", "llama-tiny", "--max-steps", "2", "--batch-size", "2", "--block-size", "32",
                 "--eval-interval", "2", "--eval-batches", "1", "--quiet", "--overwrite"])  # fmt: skip
    return code, capsys.readouterr()


def test_pretrain_cli_from_shards_mixture_and_bad_data(tmp_path, world, tokenizer, capsys):
    tok_dir = tokenizer.save(tmp_path / "tok")
    _shards(tmp_path, world, tokenizer)
    code, out = _pretrain(capsys, tmp_path, tok_dir, tmp_path / "shards")
    assert code == 0 and json.loads(out.out[: out.out.rindex("}") + 1])["steps"] == 2
    other = _corpus(tmp_path, world, "other.jsonl", world.pretrain_texts("val") * 3)
    code, out = _pretrain(capsys, tmp_path, tok_dir, f"{tmp_path / 'shards'}=0.7", f"{other}=0.3")
    assert code == 0, out.err
    code, out = _pretrain(capsys, tmp_path, tok_dir, f"{other}=0")
    assert code == 2 and "mixture weight 0.0 must be a positive number" in out.err
    foreign = BPETokenizer.train(world.pretrain_texts("train"), vocab_size=300).save(tmp_path / "tok2")
    code, out = _pretrain(capsys, tmp_path, foreign, tmp_path / "shards")
    assert code == 2 and out.err.startswith("error: ") and "prepared with another tokenizer" in out.err
    data = np.fromfile(tmp_path / "shards" / "train_000002.bin", dtype=np.uint8)
    data[:64].tofile(tmp_path / "shards" / "train_000002.bin")
    code, out = _pretrain(capsys, tmp_path, tok_dir, tmp_path / "shards")
    assert code == 2 and "train_000002.bin is truncated" in out.err and "byte offset 64" in out.err


def test_world_folder_gives_the_old_token_stream(tmp_path, tokenizer):
    """A world folder, prepared on the fly, holds exactly the ids the in-memory path built (so `danlu demo` and
    every world run see the same batches as before shards)."""
    from danlu.data.datasets import tokenize_corpus
    from danlu.data.formats import read_texts
    from danlu.data.world import write_world

    write_world(tmp_path / "w", seed=0, size="tiny")
    splits = load_token_splits(tmp_path / "w", tokenizer, 32)
    for split in ("train", "val"):
        old = tokenize_corpus(read_texts(tmp_path / "w" / f"pretrain_{split}.jsonl"), tokenizer)
        new = splits[split]
        assert torch.equal(torch.from_numpy(new.read(0, new.numel())), old)
        assert torch.equal(sample_blocks(new, 4, 32, 1, 3), sample_blocks(old, 4, 32, 1, 3))
