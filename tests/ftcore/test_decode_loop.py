"""The continuous batching thread (ftcore/serving/decode_loop.py) on the demo's tiny causal model: its answers are the
static engine's, a short request submitted after a long one is answered first, tokens stream as they are chosen, and
a request whose client went away leaves its batch."""

from __future__ import annotations

import asyncio

import pytest

from ftcore.serving.decode_loop import DecodeLoop
from ftcore.serving.engine import Completion, load_engine


@pytest.fixture(scope="module")
def engine(folders):
    return load_engine(folders["causal"], "base", "1")


def served(engine, submissions, max_rows: int = 4):
    """Run `submissions(loop)` (a coroutine function) against a started DecodeLoop."""

    async def main():
        loop = DecodeLoop(max_rows)
        await loop.start()
        try:
            return await submissions(loop)
        finally:
            await loop.stop()

    return asyncio.run(main())


def test_greedy_answers_are_the_static_engine_s_with_their_lengths_and_stop_strings(engine):
    requests = [Completion(f"Question {i}: what is {'it ' * i}?", max_new_tokens=n, stop=stop)
                for i, (n, stop) in enumerate([(12, ()), (3, ()), (20, ()), (7, ()), (16, ("e",)), (9, ("the",))])]
    expected = [engine.complete([r])[0] for r in requests]  # one at a time, no padding

    async def submit_all(loop):
        return await asyncio.gather(*(loop.submit(engine, r) for r in requests))

    answers = served(engine, submit_all, max_rows=3)  # three rows at a time: the rest join as rows finish
    for request, answer, static in zip(requests, answers, expected, strict=True):
        if not request.stop:
            assert answer == static
        else:  # the loop stops decoding at a stop string; the static engine generates on, then cuts
            assert (answer.text, answer.finish_reason) == (static.text, static.finish_reason)
            assert answer.tokens_out <= static.tokens_out
    assert answers[4].finish_reason == "stop" and answers[4].tokens_out < expected[4].tokens_out  # "e" was met


def test_a_short_request_submitted_later_is_answered_before_a_long_one(engine):
    async def race(loop):
        finished, started = [], asyncio.Event()

        async def ask(name, n, on_token=None):
            await loop.submit(engine, Completion("Tell me a long story.", max_new_tokens=n), on_token)
            finished.append(name)

        async def short_once_long_decodes():
            await started.wait()  # the long request is in the batch, with almost all of its 200 tokens to go
            await ask("short", 3)

        await asyncio.gather(ask("long", 200, lambda _: started.set()), short_once_long_decodes())
        return finished

    assert served(engine, race) == ["short", "long"]


def test_tokens_stream_as_chosen_and_a_cancelled_request_leaves_the_batch(engine):
    async def scenario(loop):
        streamed: list[int] = []
        answer = await loop.submit(engine, Completion("Hello there", max_new_tokens=10), on_token=streamed.append)
        decoding = asyncio.Event()
        gone = asyncio.ensure_future(loop.submit(engine, Completion("Go on and on", max_new_tokens=200),
                                                 on_token=lambda _: decoding.set()))
        await decoding.wait()
        gone.cancel()  # with about 199 tokens to go: were it still decoding, the batch below would not be empty
        after = await loop.submit(engine, Completion("Hello there", max_new_tokens=10))
        return streamed, answer, after, loop

    streamed, answer, after, loop = served(engine, scenario)
    assert engine.tokenizer.decode(streamed, skip_special_tokens=True) == answer.text
    assert len(streamed) == answer.tokens_out - (answer.finish_reason == "stop")
    assert after == answer and not loop._batches  # the cancelled row did not stay behind


def test_a_request_the_model_cannot_prefill_fails_alone_and_a_failed_step_fails_only_its_batch(engine, monkeypatch):
    from ftcore.serving.decoding import DecodeBatch

    join, step = DecodeBatch.join, DecodeBatch.step
    poison = engine.tokenizer("poison", add_special_tokens=False)["input_ids"]

    def refuses_poison(self, rows):
        if any(r.prompt == poison for r in rows):
            raise RuntimeError("the model cannot run this")
        return join(self, rows)

    monkeypatch.setattr(DecodeBatch, "join", refuses_poison)

    async def scenario():
        sizes: list[int] = []
        loop = DecodeLoop(4, on_join=sizes.append)
        asked = [Completion(p, max_new_tokens=4) for p in ("Question 1?", "poison", "Question 2?")]
        pending = asyncio.gather(*(loop.submit(engine, r) for r in asked), return_exceptions=True)
        await asyncio.sleep(0.05)  # all three queued before the loop starts: they join together
        await loop.start()
        try:
            first = await pending
            monkeypatch.setattr(DecodeBatch, "step", lambda self: (_ for _ in ()).throw(RuntimeError("no memory")))
            failed = await asyncio.gather(loop.submit(engine, Completion("Question 3?", max_new_tokens=4)),
                                          return_exceptions=True)
            monkeypatch.setattr(DecodeBatch, "step", step)
            after = await loop.submit(engine, Completion("Question 1?", max_new_tokens=4))
        finally:
            await loop.stop()
        return sizes, first, failed, after

    sizes, first, failed, after = asyncio.run(scenario())
    assert sizes[:4] == [3, 1, 1, 1]  # tried together, then each alone
    assert [type(a).__name__ for a in first] == ["Completed", "RuntimeError", "Completed"]
    assert isinstance(failed[0], RuntimeError) and after == first[0]  # the loop goes on after a failed step
