"""The continuous scheduler (serve/batching.py): requests arriving at different times, with different
lengths and options, each get the tokens they get decoding alone (greedy and seeded sampling); a short
request does not wait for a long one; any mix of options shares a step; rows beyond the slots wait; the
prefix cache reuses a shared system prompt and reports its hits in /health."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from danlu.errors import DanluError
from danlu.generate.engine import GenerationOptions, run
from danlu.serve.api import ServeConfig, create_app
from danlu.serve.batching import Batcher, Row, RowEvent
from danlu.serve.server import BackgroundServer


class Collector:
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.final: RowEvent | None = None
        self.done = threading.Event()
        self.first_piece = threading.Event()
        self.finished_at = 0.0

    def __call__(self, event: RowEvent) -> None:
        assert self.final is None, "no event may follow the final one"
        if event.error is not None:
            self.final = event
            self.done.set()
            return
        self.pieces.append(event.piece)
        if event.piece:
            self.first_piece.set()
        if event.done:
            self.final, self.finished_at = event, time.perf_counter()
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def row(tokenizer, prompt: str, **options) -> tuple[Row, Collector]:
    c = Collector()
    return Row(prompt, GenerationOptions(**options), len(tokenizer.encode(prompt)), c), c


def alone(model, tokenizer, r: Row):
    return run(model, tokenizer, [r.prompt], r.options)[0]


@pytest.fixture
def batcher(tiny):
    made = []

    def make(**kwargs) -> Batcher:
        b = Batcher(*tiny, **kwargs)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def check_alone(model, tokenizer, rows) -> None:
    for r, c in rows:
        assert c.done.wait(60) and c.final.error is None, c.final
        want = alone(model, tokenizer, r)
        assert c.final.completion.token_ids == want.token_ids, r.prompt
        assert c.text == want.text and c.final.finish_reason == want.finish_reason


PROMPTS = ["The capital of", "佐维兰住在", "What is 12 + 7?", "x", "Deva walks to the market and buys"]


def test_staggered_arrivals_equal_each_request_alone(tiny, batcher):
    model, tokenizer = tiny
    b = batcher(max_batch_size=4, prefill_chunk=8)
    lengths = [40, 12, 25, 6, 30, 18]
    rows = [
        row(tokenizer, PROMPTS[i % 5] * (2 if i == 5 else 1), max_new_tokens=n) for i, n in enumerate(lengths)
    ]
    for i, (r, _) in enumerate(rows):  # each arrives while the ones before it decode
        b.submit([r])
        time.sleep(0.004 * i)
    check_alone(model, tokenizer, rows)
    assert b.stats.largest_batch > 1 and b.stats.scheduler == "continuous"


def test_seeded_sampling_is_batched_and_equals_alone(tiny, batcher):
    model, tokenizer = tiny
    b = batcher(max_batch_size=8)
    rows = [row(tokenizer, PROMPTS[i], max_new_tokens=20, temperature=0.8 + 0.1 * i, seed=i, top_p=0.95)
            for i in range(5)]  # fmt: skip
    b.submit([r for r, _ in rows])
    check_alone(model, tokenizer, rows)
    assert b.stats.largest_batch == 5  # five seeds and five temperatures, one slot batch


def test_a_short_request_during_a_long_one_finishes_first(tiny, batcher):
    model, tokenizer = tiny
    b = batcher(max_batch_size=4)
    (long_row, long_c), (short_row, short_c) = (
        row(tokenizer, PROMPTS[0], max_new_tokens=200, min_new_tokens=200),
        row(tokenizer, PROMPTS[3], max_new_tokens=4, temperature=0.7, seed=1),  # other options, too
    )
    b.submit([long_row])
    assert long_c.first_piece.wait(30)
    b.submit([short_row])
    assert short_c.done.wait(30) and long_c.done.wait(60)
    assert short_c.finished_at < long_c.finished_at
    check_alone(model, tokenizer, [(short_row, short_c)])


def test_a_mix_of_options_shares_one_step(tiny, batcher):
    model, tokenizer = tiny
    b = batcher(max_batch_size=8)
    mixed = [dict(), dict(temperature=0.9, seed=3), dict(temperature=1.2, seed=4, top_k=30),
             dict(stop=["the"]), dict(repetition_penalty=1.3),
             dict(temperature=0.5, presence_penalty=1.0, seed=9)]  # fmt: skip
    rows = [row(tokenizer, PROMPTS[i % 5], max_new_tokens=30, **o) for i, o in enumerate(mixed)]
    b.submit([r for r, _ in rows])
    check_alone(model, tokenizer, rows)
    stats = b.stats.to_dict()
    assert stats["largest_batch"] == len(mixed) and stats["rows"] == len(mixed)
    assert stats["batches"] <= 31  # steps: one per token of the longest row (plus its prefill), shared by all


def test_rows_beyond_the_slots_wait_and_all_finish(tiny, batcher):
    model, tokenizer = tiny
    b = batcher(max_batch_size=2)
    rows = [row(tokenizer, PROMPTS[i], max_new_tokens=8 + i) for i in range(5)]
    b.submit([r for r, _ in rows])
    check_alone(model, tokenizer, rows)
    assert b.stats.largest_batch == 2 and b.stats.waited_for_room > 0 and b.in_flight == 0


def test_kv_room_is_admission_control(tiny, batcher):
    model, tokenizer = tiny
    b = batcher(max_batch_size=8, kv_cache_tokens=256)  # room for two rows of 128
    rows = [row(tokenizer, PROMPTS[i], max_new_tokens=100) for i in range(4)]
    b.submit([r for r, _ in rows])
    check_alone(model, tokenizer, rows)
    assert b.stats.largest_batch == 2 and b.stats.waited_for_room > 0


def test_beam_search_rows_go_the_static_way(tiny, batcher):
    model, tokenizer = tiny
    b = batcher(max_batch_size=8)
    rows = [
        row(tokenizer, PROMPTS[0], max_new_tokens=8, num_beams=3),
        row(tokenizer, PROMPTS[1], max_new_tokens=8),
    ]
    b.submit([r for r, _ in rows])
    check_alone(model, tokenizer, rows)


def test_settings_are_checked(tiny):
    with pytest.raises(DanluError, match="scheduler"):
        ServeConfig(scheduler="fast")
    with pytest.raises(DanluError, match="prefix_cache_tokens"):
        ServeConfig(prefix_cache_tokens=-1)
    with pytest.raises(DanluError, match="scheduler"):
        Batcher(*tiny, scheduler="fast")


SYSTEM = "You are the assistant of the embedded world. Answer in one short sentence, in English. " * 2


def chat(client, question: str, **extra) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    body = {"model": "tiny-world", "max_tokens": 12, "temperature": 0, "messages": messages, **extra}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_prefix_cache_hits_are_reported_and_answers_equal_a_cold_server(tiny):
    model, tokenizer = tiny
    answers = {}
    for scheduler, cache in (("continuous", 4096), ("static", 0)):
        config = ServeConfig(model_name="tiny-world", scheduler=scheduler, prefix_cache_tokens=cache)
        with (
            BackgroundServer(create_app(model, tokenizer, config)) as url,
            httpx.Client(base_url=url, timeout=60) as c,
        ):
            got = [
                chat(c, q)["choices"][0]["message"]["content"] for q in ("Who is Deva?", "Where is Zovelan?")
            ]
            health = c.get("/health").json()["batching"]
            metrics = c.get("/metrics").json()["batching"]
        answers[scheduler] = got
        assert metrics["prefix_cache"] == health["prefix_cache"]  # /metrics serves the same figures
        assert health["scheduler"] == scheduler
        pc = health["prefix_cache"]
        if cache:
            # The second request reuses the system prompt's blocks (16 tokens each) the first one stored.
            assert (
                pc["hit_tokens"] >= 32 and pc["prompt_tokens"] > pc["hit_tokens"] and 0 < pc["hit_rate"] < 1
            )
        else:
            assert pc == {"hit_rate": 0.0, "hit_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0}
    assert answers["continuous"] == answers["static"]


def test_over_max_rows_in_flight_is_a_503(tiny):
    model, tokenizer = tiny
    app = create_app(model, tokenizer, ServeConfig(model_name="tiny-world", max_rows_in_flight=3))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "tiny-world", "n": 4, "messages": [{"role": "user", "content": "Hi"}]},
        )
        assert r.status_code == 503 and "max_rows_in_flight" in r.json()["error"]["message"]
        assert chat(c, "Hi", n=3)["choices"][2]["message"]["content"] is not None
        assert app.state.batcher.in_flight == 0


def test_json_schema_rows_share_the_slot_batch_and_validate(tiny, batcher):
    model, tokenizer = tiny
    schema = {"type": "object", "required": ["tag", "size"], "additionalProperties": False,
              "properties": {"tag": {"type": "string", "maxLength": 6},
                             "size": {"type": "integer", "minimum": 0, "maximum": 99}}}  # fmt: skip
    b = batcher(max_batch_size=8)
    rows = [row(tokenizer, PROMPTS[0], max_new_tokens=40, json_schema=schema),
            row(tokenizer, PROMPTS[1], max_new_tokens=40, json_schema=schema, temperature=1.2, seed=4),
            row(tokenizer, PROMPTS[2], max_new_tokens=30)]  # fmt: skip
    b.submit([r for r, _ in rows])
    check_alone(model, tokenizer, rows)
    for _, c in rows[:2]:
        doc = json.loads(c.text)
        assert set(doc) == {"tag", "size"} and 0 <= doc["size"] <= 99
    assert b.stats.largest_batch == 3
