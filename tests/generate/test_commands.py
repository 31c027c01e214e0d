"""`danlu generate` / `danlu chat` take the library's option names, and bad values exit with `error: ...` (2)."""

import dataclasses

import pytest
import torch

import danlu
from danlu.cli import main
from danlu.generate.options import GenerationOptions
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    texts = ["the red fox runs over the hill", "佐维兰 likes rice and noodles", "3 + 4 = 7"] * 20
    tokenizer = BPETokenizer.train(texts, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=32))
    path = tmp_path_factory.mktemp("ck") / "model"
    danlu.save(model, tokenizer, path)
    return str(path), model.eval(), tokenizer


def test_cli_flags_are_the_option_names():
    from danlu.cli import build_parser

    names = {f.name for f in dataclasses.fields(GenerationOptions)}
    for command in ("generate", "chat"):
        parser = build_parser()._subparsers._group_actions[0].choices[command]
        dests = {a.dest for a in parser._actions}
        flags = {o for a in parser._actions for o in a.option_strings}
        # logit_bias has its own ID=BIAS flag; top_logprobs is for callers that read Completion (the server)
        hidden = {"logit_bias", "add_eos_stop", "stop_token_ids", "top_logprobs"}
        assert names - hidden <= dests, names - hidden - dests
        assert {"--" + n.replace("_", "-") for n in names - hidden} <= flags


def test_generate_command_equals_library(checkpoint, capsys):
    path, model, tokenizer = checkpoint
    args = ["--max-new-tokens", "10", "--temperature", "0", "--num-beams", "3", "--length-penalty", "0.6",
            "--no-repeat-ngram-size", "2", "--logit-bias", "5=-100"]  # fmt: skip
    assert main(["generate", "--model", path, "the red", *args]) == 0
    expected = danlu.generate(model, tokenizer, "the red", max_new_tokens=10, num_beams=3, length_penalty=0.6,
                              no_repeat_ngram_size=2, logit_bias={5: -100})  # fmt: skip
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", "--model", path, "the red", "--max-new-tokens", "6", "--quantize", "int8"]) == 0


@pytest.mark.parametrize(
    "flags, needle",
    [(["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
     (["--temperature", "-1"], "temperature must be >= 0"),
     (["--num-beams", "0"], "num_beams must be >= 1, got 0"),
     (["--logit-bias", "oops"], "--logit-bias takes ID=BIAS"),
     (["--max-new-tokens", "1000"], "max_new_tokens=1000 plus the")],
)  # fmt: skip
def test_bad_flags_exit_2(checkpoint, capsys, flags, needle):
    path, _, _ = checkpoint
    assert main(["generate", "--model", path, "the red", *flags]) == 2
    assert needle in capsys.readouterr().err
