"""Question answering: SQuAD-style exact match and token-level F1, each the maximum over the references.

Note 002 names question answering among the evaluation kinds (§问答任务) and defines F1 as the harmonic mean
of precision and recall (§分类任务). Extractive QA applies it to tokens (Rajpurkar et al. 2016, SQuAD v1.1):

    common    = |tokens(prediction) ∩ tokens(reference)|      (a multiset intersection)
    precision = common / |tokens(prediction)|,  recall = common / |tokens(reference)|
    F1        = 2 · precision · recall / (precision + recall), and 0 when common = 0

a question's score is the best over its accepted answers, and a dataset's is the mean over questions.

Two normalisations:
- `"squad"` (default) is the official v1.1 script's: lowercase, drop ASCII punctuation, drop the articles
  a/an/the, split on whitespace. Published SQuAD numbers use it, so danlu reproduces it exactly.
- `"multilingual"` uses `danlu.eval.text.normalize_answer` (NFKC, Unicode punctuation, full-width forms) and
  makes every CJK character a token of its own, since Chinese has no spaces between words ("维尔马" and
  "维尔马尔" then share three tokens instead of none).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from danlu.errors import DanluError
from danlu.eval._checks import check_same_length
from danlu.eval.text import normalize_answer

__all__ = ["QAScore", "squad_normalize", "qa_tokens", "token_f1", "qa_exact_match", "evaluate_qa"]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# A CJK ideograph (the basic block and extension A) or a kana character: one token each in "multilingual".
_CJK_CHAR = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff])")
_NORMALISATIONS = ("squad", "multilingual")


def squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lowercase, no ASCII punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_tokens(text: str, normalize: str = "squad") -> list[str]:
    """The tokens F1 counts: the normalised text split on whitespace (and, multilingual, per CJK character)."""
    if not isinstance(text, str):
        raise DanluError(f"answer: expected a string, got {type(text).__name__} {text!r}")
    if normalize == "squad":
        return squad_normalize(text).split()
    if normalize == "multilingual":
        return _CJK_CHAR.sub(r" \1 ", normalize_answer(text)).split()
    raise DanluError(
        f"normalize: unknown normalisation {normalize!r}; choose one of {', '.join(_NORMALISATIONS)}"
    )


def token_f1(prediction: str, reference: str, normalize: str = "squad") -> float:
    """Token-level F1 of one prediction against one reference (the formula in the module docstring)."""
    pred, ref = qa_tokens(prediction, normalize), qa_tokens(reference, normalize)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_exact_match(prediction: str, reference: str, normalize: str = "squad") -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(qa_tokens(prediction, normalize) == qa_tokens(reference, normalize))


@dataclass(frozen=True)
class QAScore:
    """Dataset means, in [0, 1] (SQuAD's script prints them ×100), and the per-question scores."""

    exact_match: float
    f1: float
    per_question_em: tuple[float, ...]
    per_question_f1: tuple[float, ...]


def evaluate_qa(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], normalize: str = "squad"
) -> QAScore:
    """EM and F1 of each prediction, maximised over its accepted answers, averaged over the questions."""
    if isinstance(predictions, str):
        raise DanluError("predictions: pass a list of strings, not one string")
    if len(predictions) == 0:
        raise DanluError("predictions: is empty; pass at least one prediction")
    check_same_length(predictions=predictions, references=references)
    ems, f1s = [], []
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise DanluError(f"references[{i}]: is empty; give at least one accepted answer")
        ems.append(max(qa_exact_match(pred, r, normalize) for r in refs))
        f1s.append(max(token_f1(pred, r, normalize) for r in refs))
    n = len(ems)
    return QAScore(sum(ems) / n, sum(f1s) / n, tuple(ems), tuple(f1s))
