"""Caches (memory, SQLite, a real Redis server): a second identical call is a hit and costs no generation; any
changed option is a miss; usage is accounted per model, streamed calls included."""

import pytest

from danlu.app.cache import MemoryCache, RedisCache, SQLiteCache, cache_key
from danlu.app.llms import FakeLLM, LocalLLM
from danlu.app.usage import UsageTracker
from danlu.errors import DanluError
from danlu.generate.engine import run


@pytest.fixture(params=["memory", "sqlite", "redis"])
def cache(request, tmp_path):
    if request.param == "memory":
        yield MemoryCache()
        return
    if request.param == "sqlite":
        yield SQLiteCache(tmp_path / "cache.sqlite")
        return
    cache = RedisCache(request.getfixturevalue("redis_url"), prefix=f"test-{tmp_path.name}:")
    yield cache
    cache.clear()


def test_second_identical_call_is_a_hit(cache):
    usage = UsageTracker()
    llm = FakeLLM(["first answer", "second answer", "third answer"], cache=cache, usage=usage)
    assert llm.invoke("What is 2 + 2?", temperature=0) == "first answer"
    assert llm.invoke("What is 2 + 2?", temperature=0) == "first answer"  # from the cache
    assert llm.calls == 1
    assert llm.invoke("What is 2 + 2?", temperature=0.5) == "second answer"  # another option: a miss
    assert "".join(llm.stream("What is 2 + 2?", temperature=0)) == "first answer"  # streaming reads it too
    assert llm.calls == 2
    u = usage.by_model["fake"]
    assert (u.requests, u.cache_hits) == (2, 2)
    assert u.prompt_tokens == 2 * 5 and u.completion_tokens == 2 + 2  # FakeLLM counts words


def test_cache_key_covers_every_option():
    base = cache_key("hi", "m", {"temperature": 0, "stop": ["."]})
    assert base == cache_key("hi", "m", {"stop": ["."], "temperature": 0})  # order does not matter
    assert base != cache_key("hi", "m", {"temperature": 0, "stop": ["!"]})
    assert base != cache_key("hi", "other", {"temperature": 0, "stop": ["."]})
    assert base != cache_key([{"role": "user", "content": "hi"}], "m", {"temperature": 0, "stop": ["."]})


def test_sqlite_cache_survives_reopening(tmp_path):
    SQLiteCache(tmp_path / "c.sqlite").set("k", "v")
    assert SQLiteCache(tmp_path / "c.sqlite").get("k") == "v"


def test_batch_only_generates_the_misses(local_model):
    model, tokenizer = local_model
    cache, usage = MemoryCache(), UsageTracker()
    llm = LocalLLM(model, tokenizer, name="tiny", cache=cache, usage=usage, options={"max_new_tokens": 8})
    first = llm.invoke("The capital of")
    out = llm.batch(["The capital of", "Deva is"])
    assert out[0] == first and len(llm.sent) == 2  # the cached prompt was not sent again
    u = usage.by_model["tiny"]
    assert u.requests == 2 and u.cache_hits == 1
    assert u.prompt_tokens == len(tokenizer.encode("The capital of")) + len(tokenizer.encode("Deva is"))


def test_usage_counts_streams_and_reports(local_model):
    model, tokenizer = local_model
    usage = UsageTracker()
    llm = LocalLLM(model, tokenizer, name="tiny", usage=usage, options={"max_new_tokens": 6})
    "".join(llm.stream("Deva is"))
    u = usage.by_model["tiny"]
    # The tokens the model generated, as the engine counts them: re-tokenising the text counted 10 here (the
    # tiny model writes broken UTF-8, whose replacement characters re-encode as more tokens).
    generated = run(model, tokenizer, ["Deva is"], max_new_tokens=6)[0]
    assert u.requests == 1 and u.completion_tokens == generated.completion_tokens == 6
    assert u.prompt_tokens == generated.prompt_tokens == len(tokenizer.encode("Deva is"))
    FakeLLM(["a b c"], usage=usage).invoke("x y")
    assert usage.total().total_tokens == u.total_tokens + 2 + 3
    assert "tiny" in usage.report() and "fake" in usage.report()


def test_redis_unreachable_is_a_clear_error():
    with pytest.raises(DanluError, match="cannot reach Redis"):
        RedisCache("redis://127.0.0.1:1/0")
