"""Test text for the tokenizer tests (a helper module, not a test file; named uniquely so that it
cannot clash with another folder's helpers): deterministic mixed English / Chinese lines with numbers,
punctuation and emoji, and random strings over all Unicode planes."""

from __future__ import annotations

import random
import unicodedata

_EN_NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Élodie", "Zoë", "Mei", "Kenji", "Omar", "Priya"]
_EN_WORDS = (
    "the a an of to in is was has had lives likes eats reads walks city river mountain red blue green "
    "teacher doctor farmer small large old young happy quietly quickly because however apple rice noodles "
    "cat dog horse bird library morning evening capital country favourite colour food job age story"
).split()
_ZH_WORDS = (
    "我 你 他 她 是 的 了 在 有 喜欢 吃 住 城市 河 山 红色 蓝色 绿色 老师 医生 农民 小 大 老 年轻 快乐 "
    "因为 但是 苹果 米饭 面条 猫 狗 马 鸟 图书馆 早上 晚上 首都 国家 最 颜色 食物 工作 年龄 故事 模型"
).split()
_PUNCT_EN = [".", ",", "!", "?", ";", ":", " -", "...", "'s", "'ll", " (x)", ' "quote"']
_PUNCT_ZH = ["。", "，", "！", "？", "；", "：", "、", "（注）", "“引号”"]
_EMOJI = ["😀", "👍🏽", "🇨🇳", "❤️", "👨‍👩‍👧", "🤖"]
_ODD = [
    "\t",
    "  ",
    "   ",
    "\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    "²",
    "Ⅷ",
    "١٢٣",
    "café",
    "naïve",
    "Straße",
    "ｆｕｌｌ",
]


def make_line(rng: random.Random) -> str:
    """One line of varied text."""
    kind = rng.random()
    if kind < 0.4:
        words = [
            rng.choice(_EN_NAMES if rng.random() < 0.2 else _EN_WORDS) for _ in range(rng.randint(3, 14))
        ]
        return " ".join(words) + rng.choice(_PUNCT_EN)
    if kind < 0.75:
        words = [rng.choice(_ZH_WORDS) for _ in range(rng.randint(3, 16))]
        return "".join(words) + rng.choice(_PUNCT_ZH)
    if kind < 0.85:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        return f"{a} + {b} = {a + b}"
    parts = []
    for _ in range(rng.randint(2, 8)):
        pick = rng.random()
        if pick < 0.3:
            parts.append(rng.choice(_EN_WORDS))
        elif pick < 0.5:
            parts.append(rng.choice(_ZH_WORDS))
        elif pick < 0.65:
            parts.append(rng.choice(_EMOJI))
        elif pick < 0.85:
            parts.append(rng.choice(_ODD))
        else:
            parts.append(str(rng.randint(0, 10**6)))
    return rng.choice(["", " ", "  "]).join(parts)


def make_corpus(n_lines: int, seed: int = 0) -> list[str]:
    """n_lines deterministic varied lines."""
    rng = random.Random(seed)
    return [make_line(rng) for _ in range(n_lines)]


def random_strings(n: int, seed: int = 0) -> list[str]:
    """Strings over all planes, assigned code points only (unassigned ones may differ by Unicode version)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        chars = []
        for _ in range(rng.randint(0, 24)):
            pick = rng.random()
            if pick < 0.3:
                cp = rng.randint(0, 0x7F)
            elif pick < 0.5:
                cp = rng.randint(0x80, 0x3000)
            elif pick < 0.75:
                cp = rng.randint(0x3000, 0xFFFF)
            elif pick < 0.85:
                cp = rng.randint(0x10000, 0x3FFFF)
            else:
                cp = rng.choice(
                    [0x20, 0x1C, 0x1F, 0x85, 0xA0, 0x2028, 0x3000, ord("'"), ord("\n"), 0xB2, 0x2167]
                )
            chars.append(chr(cp))
        out.append("".join(c for c in chars if unicodedata.category(c) not in ("Cs", "Cn")))
    return out
