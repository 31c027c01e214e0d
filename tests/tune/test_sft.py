"""SFT: the chat format, the response-only loss mask, packing, and a tiny run that learns its replies."""

import json

import pytest
import torch

from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.train.loop import TrainConfig
from danlu.tune.sft import (
    IGNORE,
    collate,
    encode_messages,
    encode_records,
    epoch_batch_indices,
    make_batch_fn,
    pack_examples,
    prompt_text,
    record_messages,
    sft,
)


def test_alpaca_record_is_masked_except_the_reply(tokenizer):
    record = {
        "instruction": "What colour is the flag of Kavo?",
        "input": "Answer briefly.",
        "output": "Black.",
    }
    ex = encode_messages(record_messages(record), tokenizer)
    prompt = prompt_text(record, tokenizer)
    assert prompt == tokenizer.apply_chat_template(
        [{"role": "user", "content": "What colour is the flag of Kavo?\n\nAnswer briefly."}],
        add_generation_prompt=True,
    )
    n_prompt = len(tokenizer.encode(prompt))
    # The prompt ids are exactly what generation encodes, and all of them are masked.
    assert ex.input_ids[:n_prompt] == tokenizer.encode(prompt)
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    trained = [t for t in ex.labels if t != IGNORE]
    assert trained == ex.input_ids[n_prompt:]
    assert tokenizer.decode(trained) == "Black.<|im_end|>\n<|endoftext|>"


def test_multi_turn_messages_train_every_assistant_turn_only(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6."},
    ]
    ex = encode_messages(messages, tokenizer)
    assert (
        tokenizer.decode(ex.input_ids)
        == tokenizer.apply_chat_template(messages, add_generation_prompt=False) + "<|endoftext|>"
    )
    trained = tokenizer.decode([t for t in ex.labels if t != IGNORE])
    assert trained == "4.<|im_end|>\n6.<|im_end|>\n<|endoftext|>"
    assert "2 + 2?" not in trained and "Be brief" not in trained


def test_packing_keeps_every_label_and_respects_block_size(world, tokenizer):
    examples = encode_records(world.sft_records("train")[:60], tokenizer, 128)
    rows = pack_examples(examples, 128, seed=1)
    assert len(rows) < len(examples) / 2
    assert all(len(r.input_ids) <= 128 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == sum(len(e.input_ids) for e in examples)
    count = lambda exs: sum(sum(t != IGNORE for t in e.labels) for e in exs)  # noqa: E731
    assert count(rows) == count(examples)
    batch = collate(rows[:4], pad_id=0)
    for i, r in enumerate(rows[:4]):  # right padding is never trained
        assert (batch["labels"][i, len(r.input_ids) :] == IGNORE).all()


def test_batches_are_a_pure_function_and_walk_epochs(world, tokenizer):
    examples = encode_records(world.sft_records("train")[:10], tokenizer, 64)
    fn = make_batch_fn(examples, examples, B=4, seed=3, grad_accum=1, pad_id=0)
    assert torch.equal(fn("train", 5, 0)["input_ids"], fn("train", 5, 0)["input_ids"])
    idx = [i for step in range(5) for i in epoch_batch_indices(10, 4, 3, step, 0, 1)]  # 20 items = 2 epochs
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    assert idx[:10] != idx[10:]  # each epoch is reshuffled


def test_reply_cut_off_by_block_size_is_an_error(tokenizer):
    record = {"instruction": "word " * 80, "input": "", "output": "yes"}
    with pytest.raises(DanluError, match="block_size=16"):
        encode_records([record], tokenizer, 16)


def test_tiny_sft_learns_the_replies(world, tokenizer, make_gpt, tmp_path):
    records = [r for r in world.sft_records("train") if r["kind"] == "arith"][:8]
    model = make_gpt()
    cfg = TrainConfig(max_steps=100, batch_size=8, block_size=64, lr=1e-2, warmup_steps=5, eval_interval=50,
                      eval_batches=1, show_progress=False, weight_decay=0.0)  # fmt: skip
    result = sft(model, tokenizer, records, tmp_path / "sft", cfg, val_records=records)
    s = result.summary
    assert s["final_val_loss"] < 0.05 * s["first_val_loss"]
    assert (tmp_path / "sft" / "checkpoint" / "config.json").is_file()
    # It learned to answer: greedy replies reproduce most training answers.
    from danlu.tune.evaluate import answers

    replies = answers(result.model, tokenizer, records, max_new_tokens=8)
    assert sum(a == r["output"] for a, r in zip(replies, records)) >= 6


def test_sft_cli_with_lora_writes_a_peft_adapter_naming_its_base_and_no_model(
    world, tokenizer, make_gpt, tmp_path, cli, capsys
):
    ck = save_model(make_gpt(), tmp_path / "base", tokenizer=tokenizer)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in world.sft_records("train")[:20]))
    code = cli(["sft", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "out"), "--lora",
                 "--lora-r", "4", "--max-steps", "3", "--batch-size", "4", "--block-size", "64", "--quiet"])  # fmt: skip
    assert code == 0
    conf = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["target_modules"] == ["q_proj", "v_proj"]
    assert conf["base_model_name_or_path"] == str(ck)
    # As with PEFT, the adapter is the result: no implicit merge; OUT/checkpoint is training state only.
    assert not (tmp_path / "out" / "merged").exists()
    assert not (tmp_path / "out" / "checkpoint" / "model.safetensors").exists()
    assert (tmp_path / "out" / "checkpoint" / "adapter_model.safetensors").is_file()
    assert f"danlu merge-lora --model {ck} --adapter" in capsys.readouterr().out


def test_sft_cli_reports_a_bad_record(tmp_path, tokenizer, make_gpt, capsys, cli):
    ck = save_model(make_gpt(), tmp_path / "base", tokenizer=tokenizer)
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"instruction": "hi", "input": ""}) + "\n")
    assert cli(["sft", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "line 1: field 'output' is missing" in capsys.readouterr().err


def test_sharegpt_alpaca_and_messages_records_train_the_same_turns(tokenizer, tmp_path):
    from danlu.data.formats import read_jsonl

    alpaca = {"instruction": "2 + 2?", "input": "", "output": "4."}
    messages = {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."}]}
    sharegpt = {"conversations": [{"from": "human", "value": "2 + 2?"}, {"from": "gpt", "value": "4."}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (alpaca, messages, sharegpt)))
    records = read_jsonl(path, "sft")
    encoded = [encode_messages(record_messages(r), tokenizer) for r in records]
    assert encoded[0] == encoded[1] == encoded[2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversations": [{"from": "bot", "value": "hi"}]}) + "\n")
    with pytest.raises(DanluError, match=r"line 1: field 'conversations'\[0\]: 'from' must be one of"):
        read_jsonl(bad, "sft")
    only_human = tmp_path / "human.jsonl"
    only_human.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}]}) + "\n")
    with pytest.raises(DanluError, match="no non-empty assistant message"):
        read_jsonl(only_human, "sft")
