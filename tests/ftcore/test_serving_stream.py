"""Streamed answers and continuous batching over real HTTP on 127.0.0.1: OpenAI's chunk format, the pieces put
together equal the whole answer (stop strings and multi-byte characters included), a client that leaves frees its
row at once, a short request finishes before a long one started earlier, per-request seeds and vLLM's min_tokens and
ignore_eos on both batching paths."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from transformers import AutoTokenizer

import ftcore.serving.engine as engine_module
from ftcore.serving.decoding import DecodeBatch
from ftcore.serving.server import serving
from ftcore.serving.streaming import EventStream, TextStream
from tests.ftcore.serving_fixtures import api_error, logged_when, metric, serve_cfg

PROMPT = "Define asthma."


def streamed(client: httpx.Client, path: str, body: dict) -> list[dict]:
    """The stream's chunks, checked to be server-sent events ending with [DONE]."""
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_a_streamed_completion_is_the_whole_answer_in_pieces(causal):
    client, _ = causal
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    hits = metric(client, "ftflow_cache_hits_total")
    chunks = streamed(client, "/v1/completions", body)
    whole = client.post("/v1/completions", json=body).json()  # from the cache the stream filled
    assert metric(client, "ftflow_cache_hits_total") == hits + 1

    *answer, finish, usage = chunks
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["object"] for c in chunks} == {"text_completion"}
    pieces = [c["choices"][0]["text"] for c in answer]
    assert len([p for p in pieces if p]) >= 8  # token by token, not the answer in one piece
    assert "".join(pieces) == whole["choices"][0]["text"]
    assert all(c["choices"][0]["finish_reason"] is None and c["usage"] is None for c in answer)
    assert finish["choices"][0]["finish_reason"] == "length" == whole["choices"][0]["finish_reason"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert usage["usage"]["completion_tokens"] == 24
    assert metric(client, 'ftflow_time_to_first_token_seconds_count{endpoint="completions"}') >= 1


def test_a_streamed_chat_speaks_as_the_assistant_in_deltas(causal):
    client, _ = causal
    body = {"messages": [{"role": "user", "content": "What is asthma?"}], "max_tokens": 12, "temperature": 0}
    chunks = streamed(client, "/v1/chat/completions", body)
    whole = client.post("/v1/chat/completions", json=body).json()
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and "usage" not in chunks[0]
    assert "".join(d["content"] for d in deltas[1:-1]) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_a_stop_string_is_never_streamed(causal):
    client, _ = causal
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    text = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    stop = next(text[i:i + 3] for i in range(6, len(text) - 3) if text[i:i + 3].strip() and
                text[i:i + 3] not in text[:i + 2])
    chunks = streamed(client, "/v1/completions", {**body, "stop": ["never there", stop]})
    pieces = [c["choices"][0]["text"] for c in chunks]
    assert "".join(pieces) == text[:text.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_text_pieces_hold_back_partial_characters_and_stop_strings(folders):
    tokenizer = AutoTokenizer.from_pretrained(folders["causal"])
    text = "Zürich 東京 naïve café, then the end"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == whole and not any("\ufffd" in p for p in pieces)
    assert len([p for p in pieces if p]) >= 5

    stopping = TextStream(tokenizer, ("the end",))
    pieces = [stopping.push(i) for i in ids]
    assert "".join(pieces) == whole[:whole.index("the end")]
    assert "".join(pieces) + stopping.rest(whole[:whole.index("the end")]) == whole[:whole.index("the end")]


@pytest.fixture
def slow_steps(monkeypatch):
    """Every decode step takes 10 ms more: long answers last long enough to act while they are decoded."""
    step = DecodeBatch.step
    steps = []

    def slow_step(self):
        steps.append(len(self))
        time.sleep(0.01)
        return step(self)

    monkeypatch.setattr(DecodeBatch, "step", slow_step)
    return steps


def test_a_client_that_leaves_a_stream_frees_its_row_at_once(folders, slow_steps):
    cfg = serve_cfg(folders["root"], "stream-leaves")
    body = {"prompt": PROMPT, "max_tokens": 200, "ignore_eos": True, "stream": True}
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            next(line for line in response.iter_lines() if line)  # the first chunk; then the client goes
        deadline = time.monotonic() + 10
        while metric(client, 'ftflow_streams_closed_total{reason="client_closed"}') < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        decoded = len(slow_steps)
        time.sleep(0.3)
        assert len(slow_steps) == decoded < 60  # 200 steps (2 s at least) had the row stayed
    rows = logged_when(cfg, 1)
    assert list(rows.status) == [499] and "closed the stream" in rows.error[0]


def test_a_short_request_finishes_before_a_long_one_started_earlier(folders, slow_steps):
    cfg = serve_cfg(folders["root"], "short-first")
    long_body = {"prompt": PROMPT, "max_tokens": 150, "ignore_eos": True, "stream": True}
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        finished = {}

        def long_request():
            with httpx.Client(base_url=url, timeout=60) as own, own.stream("POST", "/v1/completions",
                                                                             json=long_body) as response:
                lines = response.iter_lines()
                next(line for line in lines if line)
                started.set()
                assert list(lines)[-2] == "data: [DONE]"
            finished["long"] = time.monotonic()

        started = threading.Event()
        thread = threading.Thread(target=long_request)
        thread.start()
        assert started.wait(30)
        short = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "ignore_eos": True})
        finished["short"] = time.monotonic()
        thread.join(60)
        shared = metric(client, 'ftflow_decode_rows_bucket{le="2.0"}') - metric(
            client, 'ftflow_decode_rows_bucket{le="1.0"}')
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 3
    assert finished["short"] < finished["long"] - 0.5  # the long answer had over a second of steps left
    assert shared >= 1  # the short request joined the long one's decode batch


@pytest.mark.parametrize("continuous", [True, False])
def test_seeds_min_tokens_and_ignore_eos_per_request(folders, monkeypatch, continuous):
    """The model's stop token is made one its greedy answer reaches at the 4th token: the answer stops there, unless
    min_tokens holds it back or ignore_eos ignores it; on both batching paths."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(folders["causal"])
    model = AutoModelForCausalLM.from_pretrained(folders["causal"])
    ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    greedy = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, ids.shape[1]:].tolist()
    at = next(i for i in range(3, 12) if greedy[i] not in greedy[:i])
    monkeypatch.setattr(engine_module, "stop_token_ids", lambda *_: [greedy[at]])

    cfg = serve_cfg(folders["root"], f"extensions-{continuous}", batching={"continuous": continuous})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        def answer(**fields):
            response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                                                            **fields})
            assert response.status_code == 200, response.text
            return response.json()["usage"]["completion_tokens"], response.json()["choices"][0]

        tokens, choice = answer()
        assert (tokens, choice["finish_reason"]) == (at + 1, "stop")  # the stop token counts, as generate's
        assert answer(ignore_eos=True)[0] == 12 and answer(ignore_eos=True)[1]["finish_reason"] == "length"
        held, choice = answer(min_tokens=at + 2)
        assert held > at + 1 and choice["text"].startswith(tokenizer.decode(greedy[:at], skip_special_tokens=True))

        def sampled(seed):
            return answer(temperature=1.0, seed=seed, ignore_eos=True)[1]["text"]

        assert sampled(7) == sampled(7) != sampled(8)


def test_bad_stream_requests_get_400(causal):
    client, _ = causal
    many = client.post("/v1/completions", json={"prompt": ["a", "b"], "stream": True})
    assert api_error(many, 400)["code"] == "stream_many_prompts"
    assert api_error(client.post("/v1/completions", json={"prompt": "a", "stream": True, "n": 2}), 400)["param"] == "n"


def test_a_stream_the_client_stops_reading_is_closed_after_the_stall_bound():
    ended = []

    async def events():
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    async def receive():
        await asyncio.Event().wait()  # the client neither leaves nor reads

    async def send(message):
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # its socket is full: nothing more goes out

    response = EventStream(events(), stall_s=0.05, on_end=ended.append)
    asyncio.run(asyncio.wait_for(response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send), 5))
    assert ended == ["stalled"]


def test_a_model_failing_mid_stream_ends_it_with_an_error_event(folders, monkeypatch):
    cfg = serve_cfg(folders["root"], "stream-fails")
    step = DecodeBatch.step
    calls = []

    def fails_later(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory")
        return step(self)

    monkeypatch.setattr(DecodeBatch, "step", fails_later)
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 10,
                                                            "ignore_eos": True, "stream": True}) as response:
            lines = [json.loads(line[6:]) for line in response.iter_lines() if line]
        assert response.status_code == 200 and lines[-1]["error"]["type"] == "server_error"
        assert "CUDA" not in lines[-1]["error"]["message"] and len(lines) >= 2
        assert metric(client, 'ftflow_streams_closed_total{reason="error"}') == 1
        assert client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code == 200
