"""`Tokenizer.pad_id` and `Tokenizer.end_of_turn_ids`: the one fallback rule every batcher and chat stop uses."""

from __future__ import annotations

from danlu.tokenizers.bpe import BPETokenizer
from danlu.tokenizers.wordpiece import WordPieceTokenizer


def _wordpiece() -> WordPieceTokenizer:
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    return WordPieceTokenizer({**specials, "a": 5}, specials)


def test_pad_id_falls_back_to_eos_then_zero(bpe):
    assert bpe.pad_token is not None and bpe.pad_id == bpe.pad_token_id
    no_pad = BPETokenizer.train(["hello world"] * 5, 300)
    no_pad.pad_token, no_pad.eos_token = None, "<|im_end|>"  # an eos whose id is not 0
    assert no_pad.pad_id == no_pad.eos_token_id and no_pad.pad_id != 0
    no_pad.eos_token = None
    assert no_pad.pad_id == 0


def test_pad_id_prefers_the_pad_token_over_eos():
    wp = _wordpiece()
    wp.eos_token = "[SEP]"
    assert (wp.pad_id, wp.eos_token_id) == (0, 3)


def test_end_of_turn_ids_are_the_chat_closers_present(bpe, smollm2_gguf):
    from danlu.tokenizers.gguf import tokenizer_from_gguf

    assert bpe.end_of_turn_ids == [bpe.token_to_id("<|im_end|>")]
    smol = tokenizer_from_gguf(smollm2_gguf)
    # SmolLM2's chat template closes an assistant turn with <|im_end|> (its id 2)
    assert smol.end_of_turn_ids == [smol.token_to_id("<|im_end|>")] == [2]
    wp = _wordpiece()
    assert wp.end_of_turn_ids == []
