"""`danlu generate` on a chat model sends the prompt through its chat template (SmolLM2-135M-Instruct, whose
GGUF carries one), says so on stderr, and `--raw` continues the text as it is."""

import danlu
from danlu.cli import main


def test_generate_uses_the_chat_template_of_a_chat_model(smollm2_gguf, capsys):
    model, tokenizer = danlu.load(smollm2_gguf)
    question = "What is the capital of France?"
    chat_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True
    )
    # compile=False: the eager step with float activations answers the user turn
    assert "Paris" in danlu.generate(model, tokenizer, chat_prompt, max_new_tokens=8, compile=False)
    # the CLI's default path for this file is the library's: the GGUF's blocks, compiled, through danlu's CPU
    # kernel, whose int8 activations flip this prompt's 0.08-logit tie as llama.cpp's do ("L'Étoile, ...")
    expected = danlu.generate(model, tokenizer, chat_prompt, max_new_tokens=8, quiet=True)
    args = ["generate", "--model", str(smollm2_gguf), "--max-new-tokens", "8", "--threads", "2"]
    assert main([*args, question]) == 0
    out = capsys.readouterr()
    assert out.out == expected + "\n"
    assert "generate: chat mode" in out.err and "default for this model" in out.err
    assert "rounds activations to 8 bits" in out.err and "DANLU_CPU_KERNEL=0" in out.err  # and the opt-out
    assert main([*args, "--raw", question]) == 0
    out = capsys.readouterr()
    assert out.out == danlu.generate(model, tokenizer, question, max_new_tokens=8, quiet=True) + "\n"
    assert "generate: raw mode" in out.err and "(--raw)" in out.err


def test_a_model_without_a_template_of_its_own_continues_raw_text(tmp_path, capsys):
    import torch

    from danlu.models.gpt import GPT, GPTConfig
    from danlu.tokenizers.bpe import BPETokenizer

    tokenizer = BPETokenizer.train(["the red fox runs over the hill"] * 20, 280)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=32))
    danlu.save(model, tokenizer, tmp_path / "m")
    assert main(["generate", "--model", str(tmp_path / "m"), "the red", "--max-new-tokens", "4"]) == 0
    assert "generate: raw mode" in capsys.readouterr().err
    assert (
        main(["generate", "--model", str(tmp_path / "m"), "the red", "--max-new-tokens", "4", "--chat"]) == 0
    )
    out = capsys.readouterr()
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "the red"}], add_generation_prompt=True)
    assert out.out == danlu.generate(model.eval(), tokenizer, chat, max_new_tokens=4) + "\n"
    assert "generate: chat mode" in out.err
