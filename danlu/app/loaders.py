"""Documents and loaders: a `Document` is text plus a metadata dict; loaders read text and markdown files.

Metadata always holds `source` (the file path, or what the caller names) so an answer can cite where its
facts came from; markdown files also get `title` (their first heading).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.errors import DanluError

TEXT_SUFFIXES = (".txt", ".md", ".markdown")


@dataclass
class Document:
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def load_file(path: str | Path, encoding: str = "utf-8") -> Document:
    """One text or markdown file as a Document (metadata: source, and title for markdown)."""
    path = Path(path)
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise DanluError(f"{path} is not {encoding} text ({e}); convert it or pass encoding=") from e
    except OSError as e:
        raise DanluError(f"cannot read {path} ({e})") from e
    meta: dict[str, Any] = {"source": str(path)}
    if path.suffix.lower() in (".md", ".markdown"):
        m = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
        if m:
            meta["title"] = m.group(1)
    return Document(text, meta)


def load_folder(
    folder: str | Path, suffixes: Iterable[str] = TEXT_SUFFIXES, recursive: bool = True
) -> list[Document]:
    """Every file under `folder` whose suffix is in `suffixes`, sorted by path (so indexing is repeatable)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DanluError(f"{folder} is not a folder; give a folder of .txt / .md files")
    wanted = {s.lower() for s in suffixes}
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in wanted)
    if not files:
        raise DanluError(f"{folder} holds no files ending in {sorted(wanted)}")
    return [load_file(p) for p in files]


def world_fact_documents(world: Any, langs: tuple[str, ...] = ("en", "zh")) -> list[Document]:
    """The embedded world's facts as documents: one per fact and language (a sentence each), with the fact's id
    as `source` (shared by its English and Chinese sentence) so retrieval can be scored against it."""
    langs = (langs,) if isinstance(langs, str) else tuple(langs)
    bad = [x for x in langs if x not in ("en", "zh")]
    if bad or not langs:
        raise DanluError(f"langs must be a non-empty tuple of 'en' / 'zh', got {langs!r}")
    return [
        Document(
            f[lang], {"source": f["id"], "lang": lang, "relation": f["relation"], "subject": f["subject"]}
        )
        for lang in langs
        for f in world.fact_records()
    ]
