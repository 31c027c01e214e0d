"""DemoContext.options: the one way a demo stage builds its recipe's options from the parsed flags."""

import argparse
from pathlib import Path

from danlu.recipes.bert import BertRunOptions
from danlu.recipes.context import DemoContext
from danlu.recipes.seq2seq import TranslatorOptions


def test_stage_options_take_the_flags_present_and_the_defaults_of_the_rest():
    args = argparse.Namespace(device="cpu", seed=3, quiet=True, bert_steps=7, seq2seq_objective="t5")
    ctx = DemoContext(out=Path("o"), args=args)
    opts = ctx.options(BertRunOptions, steps="bert_steps", finetune_steps="bert_finetune_steps")
    assert opts == BertRunOptions(steps=7, device="cpu", seed=3, show_progress=False)
    opts = ctx.options(TranslatorOptions, steps="seq2seq_steps", denoise_objective="seq2seq_objective")
    assert opts == TranslatorOptions(denoise_objective="t5", device="cpu", seed=3, show_progress=False)
    args.quiet = False
    assert ctx.options(TranslatorOptions).show_progress
