"""The batcher: a batch decodes each row exactly as the engine does alone (greedy), with per-row stop strings
and lengths; rows are grouped by options and by what fits the context; concurrent submissions share batches."""

import threading

import danlu
from danlu.serve.batching import Batcher, Row, RowEvent, plan_batches, run_batch


class Collector:
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.final: RowEvent | None = None
        self.done = threading.Event()

    def __call__(self, event: RowEvent) -> None:
        assert self.final is None, "no event may follow the final one"
        if event.error is not None:
            raise AssertionError(event.error)
        self.pieces.append(event.piece)
        if event.done:
            self.final = event
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def row(tokenizer, prompt, **options) -> tuple[Row, Collector]:
    c = Collector()
    options = {"temperature": 0.0, **options}
    return Row(prompt, options, len(tokenizer.encode(prompt)), c), c


def test_a_batch_equals_each_row_alone(tiny):
    model, tokenizer = tiny
    prompts = ["The capital of", "佐维兰住在", "What is 12 + 7?", "x"]
    lengths = [12, 5, 20, 1]
    rows = [row(tokenizer, p, max_new_tokens=n) for p, n in zip(prompts, lengths)]
    run_batch(model, tokenizer, [r for r, _ in rows])
    for (_r, c), p, n in zip(rows, prompts, lengths):
        alone = danlu.generate(model, tokenizer, p, max_new_tokens=n)
        assert c.text == alone
        assert c.final.finish_reason == "length" and c.final.completion_tokens == n


def test_per_row_stop_strings(tiny):
    model, tokenizer = tiny
    full = danlu.generate(model, tokenizer, "Deva is", max_new_tokens=16)
    stop = full[4:6]
    (r1, c1), (r2, c2) = (
        row(tokenizer, "Deva is", max_new_tokens=16, stop=[stop]),
        row(tokenizer, "Deva is", max_new_tokens=16),
    )
    run_batch(model, tokenizer, [r1, r2])
    assert c1.text == full[: full.index(stop)] and c1.final.finish_reason == "stop"
    assert c2.text == full


def test_plan_batches_groups_by_options_and_context(tiny):
    _, tokenizer = tiny
    a = row(tokenizer, "a", max_new_tokens=4)[0]
    b = row(tokenizer, "b", max_new_tokens=8, stop=["."])[0]  # stop and length may differ within a batch
    hot = row(tokenizer, "c", max_new_tokens=4, temperature=0.8)[0]  # other options: another batch
    long_ = Row("d", {"temperature": 0.0, "max_new_tokens": 200}, 100, lambda e: None)  # 100 + 200 > 256
    batches = plan_batches([a, b, hot, long_], max_batch_size=8, block_size=256)
    assert [[r.prompt for r in batch] for batch in batches] == [["a", "b"], ["d"], ["c"]]
    assert [len(b) for b in plan_batches([a] * 5, max_batch_size=2, block_size=256)] == [2, 2, 1]


def test_concurrent_submissions_share_a_batch(tiny):
    model, tokenizer = tiny
    batcher = Batcher(model, tokenizer, max_batch_size=16, max_wait_ms=200)
    batcher.start()
    try:
        rows = [row(tokenizer, f"Prompt number {i}", max_new_tokens=6) for i in range(6)]
        threads = [threading.Thread(target=batcher.submit, args=([r],)) for r, _ in rows]
        for t in threads:
            t.start()
        for _, c in rows:
            assert c.done.wait(60)
        assert batcher.stats.largest_batch > 1
        for r, c in rows:
            assert c.text == danlu.generate(model, tokenizer, r.prompt, max_new_tokens=6)
    finally:
        batcher.stop()


def test_cancelled_rows_stop_early(tiny):
    model, tokenizer = tiny
    r, c = row(tokenizer, "Deva", max_new_tokens=50)
    r.cancelled = True
    run_batch(model, tokenizer, [r])
    assert c.final is None and c.pieces == []
