"""The RAG store under stress, and the calculator at the edges of floating point: threads adding while others
search, a second process writing to an open store, a read-only or full disk, text that is not valid Unicode,
results that are not finite numbers. Each is a clear DanluError (or simply works), never a traceback."""

import subprocess
import sys
import textwrap
import threading

import pytest

from danlu.app import stores
from danlu.app.embeddings import HashingEmbeddings
from danlu.app.stores import VectorStore
from danlu.app.tools import ToolError, calculate
from danlu.errors import DanluError


def test_threads_adding_and_searching_at_once(tmp_path):
    """Writers and readers interleaved: every search sees one consistent snapshot (today's main mixes two and
    indexes past the end of the older one: IndexError)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so the interleavings actually happen
    store = VectorStore(tmp_path / "s.sqlite", HashingEmbeddings(64))
    errors, counts = [], []

    def writer(w):
        try:
            for i in range(100):
                store.add([f"fact {w}-{i} about towns"], ids=[f"{w}-{i}"])
        except Exception as e:  # noqa: BLE001 - any exception is the failure under test
            errors.append(repr(e))

    def reader():
        try:
            for _ in range(200):
                hits = store.search("fact about towns", k=1000)  # every row: the newest too
                assert len({h.id for h in hits}) == len(hits)
                counts.append(len(hits))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert len(store) == 200 and len(store.search("fact", k=1000)) == 200 and max(counts) <= 200
    store.close()


def test_another_process_writes_are_seen_by_an_open_store(tmp_path):
    path = tmp_path / "shared.sqlite"
    store = VectorStore(path, HashingEmbeddings(64))
    store.add(["Zovelan lives in Hetoris."])
    assert [h.text for h in store.search("Zovelan", k=5)] == ["Zovelan lives in Hetoris."]  # cache built
    other = textwrap.dedent(f"""
        from danlu.app.embeddings import HashingEmbeddings
        from danlu.app.stores import VectorStore
        VectorStore({str(path)!r}, HashingEmbeddings(64)).add(["Bonalen lives in Qerith."])
    """)
    subprocess.run([sys.executable, "-c", other], check=True, timeout=60)
    texts = {h.text for h in store.search("Bonalen lives", k=5)}
    assert texts == {"Zovelan lives in Hetoris.", "Bonalen lives in Qerith."}  # main: the stale cache, one
    assert len(store) == 2
    assert store._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_on_a_read_only_disk(tmp_path, monkeypatch):
    path = tmp_path / "ro.sqlite"
    built = VectorStore(path, HashingEmbeddings(64))
    built.add(["Zovelan lives in Hetoris."])
    built.close()
    # The OS says nothing here is writable (chmod is no test when the tests run as root).
    monkeypatch.setattr(stores.os, "access", lambda p, mode: False)
    store = VectorStore(path, HashingEmbeddings(64))
    assert store.read_only and store.search("Zovelan", k=1)[0].text == "Zovelan lives in Hetoris."
    with pytest.raises(DanluError, match="read-only"):
        store.add(["Bonalen lives in Qerith."])
    with pytest.raises(DanluError, match="read-only"):
        store.delete(ids=["x"])
    with pytest.raises(DanluError, match="folder is not writable"):
        VectorStore(tmp_path / "new.sqlite", HashingEmbeddings(64))


def test_a_store_whose_file_turns_read_only(tmp_path):
    """SQLite's own refusal to write (here: `PRAGMA query_only`, as from a disk remounted read-only) is a
    DanluError, and the store still answers searches."""
    store = VectorStore(tmp_path / "s.sqlite", HashingEmbeddings(64))
    store.add(["Zovelan lives in Hetoris."])
    store._db().execute("PRAGMA query_only = 1")
    with pytest.raises(DanluError, match="read-only"):
        store.add(["Bonalen lives in Qerith."])
    assert len(store) == 1 and store.search("Zovelan", k=1)[0].text.startswith("Zovelan")


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path):
    store = VectorStore(tmp_path / "s.sqlite", HashingEmbeddings(64))
    store.add(["Zovelan lives in Hetoris."])
    db = store._db()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: as a full disk
    with pytest.raises(DanluError, match="full"):
        store.add(["x" * 100_000])
    assert [h.text for h in store.search("Zovelan", k=5)] == ["Zovelan lives in Hetoris."]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.add(["lone \ud800 surrogate"]),
        lambda s: s.add(["fine"], metadatas=[{"source": "bad\udc80.md"}]),
        lambda s: s.add(["fine"], metadatas=[{"tags": ["ok", "\udfff"]}]),
        lambda s: s.add(["fine"], ids=["\ud83d"]),
        lambda s: s.search("query \ud800"),
        lambda s: s.mmr("query \ud800"),
    ],
)
def test_surrogates_are_rejected_clearly(call):
    store = VectorStore(":memory:", HashingEmbeddings(64))
    store.add(["Zovelan lives in Hetoris."])
    with pytest.raises(DanluError, match="surrogate"):
        call(store)
    assert len(store) == 1


@pytest.mark.parametrize(
    "expression", ["1e1000", "-1e1000", "1e999-1e999", "1e999*0", "1e308*10", "(-8)**0.5"]
)
def test_the_calculator_rejects_non_finite_results(expression):
    with pytest.raises(ToolError, match="finite|out of range|not a real"):
        calculate(expression)


def test_the_calculator_still_computes_ordinary_floats():
    assert calculate("2**0.5") == pytest.approx(1.41421356)
    assert calculate("1e29 * 10") == pytest.approx(1e30)
