"""A request with min_tokens > 1 under the static batcher: it is grouped and decoded (at least min_tokens new
tokens), and the batching worker survives it. On main before this fix the group key replaced max_new_tokens by 1,
GenerationOptions rejected min_new_tokens > max_new_tokens, and the exception killed the worker thread: every
later request of the server hung (found by benchmarks/serve_load.py's probe)."""

import threading

from danlu.serve.batching import Batcher, Row, RowEvent, plan_batches


def test_rows_with_min_tokens_are_grouped(tiny):
    model, tokenizer = tiny
    rows = [Row("The capital of", {"max_new_tokens": n, "min_new_tokens": 5}, 3, print) for n in (8, 12)]
    batches = plan_batches(rows, max_batch_size=8, block_size=model.config.block_size)
    assert [len(b) for b in batches] == [2]  # the same options but the length: one batch


def test_the_worker_survives_min_tokens(tiny):
    model, tokenizer = tiny
    batcher = Batcher(model, tokenizer, max_batch_size=4, max_wait_ms=1)
    batcher.start()
    try:
        for _ in range(2):  # the second request is answered too: the worker is still running
            finals: list[RowEvent] = []
            done = threading.Event()

            def emit(event: RowEvent, finals=finals, done=done) -> None:
                if event.done or event.error is not None:
                    finals.append(event)
                    done.set()

            opts = {"max_new_tokens": 12, "min_new_tokens": 6, "temperature": 0.0}
            batcher.submit([Row("Deva is", opts, len(tokenizer.encode("Deva is")), emit)])
            assert done.wait(30), "no answer within 30 s: the batching worker died"
            assert finals[0].error is None and finals[0].completion_tokens >= 6
        assert batcher.alive
    finally:
        batcher.stop()
