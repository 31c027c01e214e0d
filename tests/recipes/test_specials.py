"""The recipes' one special-token helper (danlu/recipes/specials.py): BERT's and the translator's tokenizers
are trained with their specials as the first ids, and a tokenizer without them is refused naming what lacks."""

import pytest

from danlu.errors import DanluError
from danlu.recipes import bert, seq2seq
from danlu.recipes.specials import train_bpe

TEXTS = ["The capital of Zorvia is Velmar.", "Noten is a baker.", "三加四等于七。"] * 4


def test_bert_and_seq2seq_tokenizers_put_their_specials_first_with_their_roles():
    tok = bert.train_tokenizer(TEXTS, vocab_size=300)
    assert bert.special_ids(tok) == {s: i for i, s in enumerate(bert.SPECIALS)}
    assert (tok.pad_token, tok.unk_token, tok.eos_token) == ("[PAD]", "[UNK]", "[SEP]")
    assert tok.pad_token_id == 0 and tok.eos_token_id == 3
    tok = seq2seq.train_tokenizer(TEXTS, vocab_size=300, n_sentinels=2)
    assert seq2seq.check_tokenizer(tok) == {s: i for i, s in enumerate(seq2seq.SPECIALS)}
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert seq2seq.sentinel_ids(tok) == [4, 5]


def test_a_tokenizer_without_the_specials_is_refused_naming_them_and_the_trainer():
    plain = train_bpe(TEXTS, 300, ["<|endoftext|>"])
    with pytest.raises(DanluError, match=r"lacks the special tokens \['\[PAD\]'.*BERT needs all of") as e:
        bert.special_ids(plain)
    assert "danlu.recipes.bert.train_tokenizer" in str(e.value)
    with pytest.raises(
        DanluError, match=r"lacks the special tokens \['<pad>', '<s>', '</s>', '<mask>'\]"
    ) as e:
        seq2seq.check_tokenizer(plain)
    assert "a seq2seq tokenizer needs all of" in str(e.value)
    assert "danlu.recipes.seq2seq.train_tokenizer" in str(e.value)
    with pytest.raises(DanluError, match="lacks"):
        bert.encode_pair(plain, "a", "b", 16)  # every BERT input goes through the check


def test_a_role_must_name_one_of_the_specials():
    with pytest.raises(ValueError, match="pad_token='<pad>' is not among the special tokens"):
        train_bpe(TEXTS, 300, ["[PAD]"], pad_token="<pad>")
