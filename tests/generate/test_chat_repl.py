"""`danlu chat` through a pseudo-terminal, as a person types: Ctrl-C stops one reply and the session goes on,
/reset, /system and /save say what they did, a reply cut at --max-new-tokens is marked, Ctrl-C twice quits."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pexpect
import pytest
import torch

import danlu
from danlu.generate.chat_repl import ChatSession
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer

MAX_NEW = 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    texts = ["the red fox runs over the hill", "佐维兰 likes rice and noodles", "3 + 4 = 7"] * 20
    tokenizer = BPETokenizer.train(texts, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=32))
    path = tmp_path_factory.mktemp("ck") / "model"
    danlu.save(model, tokenizer, path)
    return path, model.eval(), tokenizer


def spawn_chat(tmp_path, checkpoint_path, seconds_per_token: float) -> pexpect.spawn:
    """The real `danlu chat` CLI in a pty; every forward pass sleeps so a reply takes seconds and a Ctrl-C
    sent mid-reply lands mid-reply."""
    script = tmp_path / "chat_child.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        import danlu
        from danlu.cli import main

        real_load = danlu.load

        def slow_load(*args, **kwargs):
            model, tokenizer = real_load(*args, **kwargs)
            model.register_forward_hook(lambda *a: time.sleep({seconds_per_token}))
            return model, tokenizer

        danlu.load = slow_load
        # the decode step may bypass model.forward (the lean static-cache step): slow it down where it is called
        from danlu.generate import search
        real_step = search.decode_one

        def slow_step(*args, **kwargs):
            time.sleep({seconds_per_token})
            return real_step(*args, **kwargs)

        search.decode_one = slow_step
        raise SystemExit(main(["chat", "--model", {str(checkpoint_path)!r}, "--max-new-tokens", "{MAX_NEW}",
                               "--min-new-tokens", "{MAX_NEW}", "--temperature", "0"]))
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    return pexpect.spawn(sys.executable, [str(script)], env=env, timeout=30, encoding="utf-8")


def test_ctrl_c_stops_one_reply_and_the_session_goes_on(checkpoint, tmp_path):
    path, _, _ = checkpoint
    child = spawn_chat(tmp_path, path, seconds_per_token=0.05)  # a full reply takes >= 2 s
    child.expect("danlu chat")  # the banner comes first
    child.expect("you> ")
    child.sendline("hello")
    child.expect("bot> ")
    time.sleep(0.5)
    child.sendintr()  # Ctrl-C mid-reply
    child.expect(r"\[stopped after (\d+) tokens; the partial reply is kept\]")
    assert 0 < int(child.match.group(1)) < MAX_NEW
    child.expect("you> ")  # still talking

    child.sendline("/system Answer in one word.")
    child.expect(r"\[system prompt set \(19 characters\)")
    child.sendline("and now?")
    child.expect("bot> ")
    child.expect(rf"\[cut at {MAX_NEW} tokens; --max-new-tokens allows longer replies\]")  # a full reply
    child.expect("you> ")

    saved = tmp_path / "conversation.json"
    child.sendline(f"/save {saved}")
    child.expect(r"\[saved 5 messages to ")
    messages = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "Answer in one word." and messages[1]["content"] == "hello"

    child.sendline("/reset")
    child.expect(r"\[conversation reset: 4 messages forgotten; the system prompt stays\]")
    child.sendline("/frobnicate")
    child.expect(r"\[unknown command /frobnicate; /help lists the commands\]")

    child.expect("you> ")
    time.sleep(0.3)  # a person's Ctrl-C comes after readline is waiting again, not within microseconds of it
    child.sendintr()  # once at the prompt: a hint, not the end
    child.expect(r"Ctrl-C again or Ctrl-D to quit")
    child.expect("you> ")
    time.sleep(0.3)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_d_quits(checkpoint):
    _, model, tokenizer = checkpoint

    def read(prompt):
        raise EOFError  # what input() raises on Ctrl-D

    assert ChatSession(model, tokenizer, {"max_new_tokens": 2}).run(read=read) == 0


def test_notes_follow_the_reply_and_save_errors_are_reported(checkpoint, tmp_path, capsys):
    _, model, tokenizer = checkpoint
    lines = iter(["hi", f"/save {tmp_path}/no/such/dir/x.json", "/system", "/help", "/exit"])
    session = ChatSession(model, tokenizer, {"max_new_tokens": 5, "min_new_tokens": 5})
    assert session.run(read=lambda prompt: next(lines)) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("bot> ") and "[cut at 5 tokens" in captured.err
    assert "could not write" in captured.err and "the conversation is unchanged" in captured.err
    assert "[no system prompt]" in captured.err and "/save FILE" in captured.err
    assert captured.err.index("danlu chat") < captured.err.index("[cut at")  # banner before everything


def test_ctrl_c_twice_at_the_prompt_quits(checkpoint, tmp_path):
    path, _, _ = checkpoint
    child = spawn_chat(tmp_path, path, seconds_per_token=0.0)
    child.expect("you> ")
    time.sleep(0.3)
    child.sendintr()
    child.expect(r"Ctrl-C again or Ctrl-D to quit")
    child.expect("you> ")
    time.sleep(0.3)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_d_at_the_prompt_quits(checkpoint, tmp_path):
    path, _, _ = checkpoint
    child = spawn_chat(tmp_path, path, seconds_per_token=0.0)
    child.expect("you> ")
    time.sleep(0.3)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
