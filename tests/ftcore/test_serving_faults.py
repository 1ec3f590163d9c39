"""The endpoint when things go wrong, over real HTTP on 127.0.0.1: requests it refuses (limits, malformed bodies,
wrong routes, empty inputs, chats the template refuses), a failing model, bad serving configs, clients that
misbehave (leave, stall, hold a connection), and damaged model versions."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ftcore.errors import UserError
from ftcore.serving.config import ServeConfig, load_serve_config
from ftcore.serving.decoding import DecodeBatch
from ftcore.serving.engine import Engine
from ftcore.serving.request_log import RequestLog
from ftcore.serving.server import serving
from tests.ftcore.serving_fixtures import (
    TOKEN,
    api_error,
    logged_when,
    metric,
    serve_cfg,
)


def test_a_causal_model_refuses_classify(causal):
    client, _ = causal
    assert api_error(client.post("/v1/classify", json={"input": "x"}), 400)["code"] == "wrong_endpoint"


def test_limits_say_what_was_exceeded(causal):
    client, _ = causal
    too_many_tokens = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10_000})
    error = api_error(too_many_tokens, 400)
    assert (error["param"], error["code"]) == ("max_tokens", "max_tokens_exceeded") and "256" in error["message"]
    long_prompt = client.post("/v1/completions", json={"prompt": "asthma " * 200, "max_tokens": 2})
    error = api_error(long_prompt, 400)
    assert error["code"] == "prompt_too_long" and "limits.max_prompt_tokens" in error["message"]
    many = client.post("/v1/completions", json={"prompt": ["x"] * 65, "max_tokens": 1})
    assert api_error(many, 400)["code"] == "too_many_inputs"
    assert api_error(client.post("/v1/completions", json={"prompt": [], "max_tokens": 1}), 400)["param"] == "prompt"


def test_an_oversized_body_is_refused_before_it_is_read(causal):
    client, cfg = causal
    big = json.dumps({"prompt": "x" * (cfg.limits.max_body_bytes + 10)})
    assert api_error(client.post("/v1/completions", content=big,
                              headers={"content-type": "application/json"}), 413)["code"] == "body_too_large"

    # Sent in chunks, without a Content-Length, it is counted as it arrives.
    def chunks():
        for _ in range(20):
            yield b"x" * 100_000

    chunked = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert api_error(chunked, 413)["type"] == "request_too_large"


@pytest.mark.parametrize(("body", "param", "code"), [
    ('{"prompt": ', None, "invalid_json"),
    ("not json at all", None, "invalid_json"),
    ('{"prompt": 5}', "prompt", "invalid_field"),
    ('{"prompt": "x", "max_tokens": "many"}', "max_tokens", "invalid_field"),
    ('{"prompt": "x", "temperature": -1}', "temperature", "invalid_field"),
    ('{"prompt": "x", "n": 3}', "n", "invalid_field"),
    ('{"prompt": "x", "stop": [' + ", ".join(['"a"'] * 17) + ']}', "stop", "invalid_field"),
    ('{"prompt": "x", "stream": true, "n": 2}', "n", "invalid_field"),
    ("{}", "prompt", "invalid_field"),
    ("[1, 2]", None, "invalid_field"),
])
def test_malformed_requests_get_400_naming_the_field(causal, body, param, code):
    client, _ = causal
    error = api_error(client.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_unknown_routes_and_methods_are_json_errors(causal):
    client, _ = causal
    assert api_error(client.get("/v1/nothing"), 404)["type"] == "not_found_error"
    assert api_error(client.get("/v1/completions"), 405)["type"] == "method_not_allowed"


def test_a_failing_model_gives_500_json_and_the_server_goes_on(folders, monkeypatch):
    cfg = serve_cfg(folders["root"], "failing")
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        def out_of_memory(self, *rows):
            raise RuntimeError("CUDA out of memory")

        with monkeypatch.context() as patch:  # the server runs in this process: its engine fails from now on
            patch.setattr(Engine, "complete", out_of_memory)  # dynamic batches
            patch.setattr(DecodeBatch, "join", out_of_memory)  # continuous batching
            error = api_error(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}), 500)
        # The client learns the kind of failure; the details stay in the server log and the request log.
        assert error["type"] == "server_error" and "RuntimeError" in error["message"]
        assert "CUDA" not in error["message"]
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
        assert client.get("/health").json()["status"] == "ok"
    logged = RequestLog(cfg.request_log.resolved_url()).read()
    assert list(logged.status) == [500, 200] and "CUDA out of memory" in logged.error[0]


def test_bad_serving_config_and_uri_are_one_line_errors(tmp_path, folders):
    bad = tmp_path / "serve.yaml"
    bad.write_text("batching: {max_batch_size: 0}\ncache: {size: 3}\n")
    with pytest.raises(UserError, match=r"serve.yaml: batching.max_batch_size: .*; cache.size: unknown field"):
        load_serve_config(bad)
    with pytest.raises(UserError, match="neither models:/NAME@ALIAS"), serving(str(tmp_path / "missing"),
                                                                              ServeConfig()):
        pass
    broken_log = serve_cfg(tmp_path, "x", request_log={"url": "nosuchdb://x"})
    with pytest.raises(UserError, match=r"request_log\.url: cannot open"), serving(str(folders["causal"]), broken_log):
        pass


# --- clients that misbehave, requests the model cannot run, damaged versions (issue 19, items 14-17) -------------


def _raw(url: str, data: bytes) -> socket.socket:
    """A raw connection to the server at `url` that has sent `data` and reads with a generous timeout."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(data)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


def _post_head(path: str, length: int, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", f"Content-Length: {length}",
             *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def server_log(caplog):
    """What the in-process server logs, uvicorn's own logger (which does not propagate) included."""
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    yield caplog
    uvicorn_logger.removeHandler(caplog.handler)


def test_a_client_that_leaves_is_recorded_as_499_and_is_no_server_error(folders, monkeypatch, server_log):
    from ftcore.monitor.window import traffic_metrics

    cfg = serve_cfg(folders["root"], "disconnects")
    answering = threading.Event()
    step = DecodeBatch.step

    def slow_step(self):
        answering.set()
        time.sleep(0.25)  # long enough for the client below to leave while its answer is computed
        return step(self)

    monkeypatch.setattr(DecodeBatch, "step", slow_step)
    body = json.dumps({"prompt": "What is asthma?", "max_tokens": 4}).encode()
    with serving(str(folders["causal"]), cfg, token=TOKEN) as url, httpx.Client(base_url=url, timeout=60) as client:
        auth = f"Authorization: Bearer {TOKEN}"
        _raw(url, _post_head("/v1/completions", len(body), auth) + body[:10]).close()  # leaves during the body
        waiting = _raw(url, _post_head("/v1/completions", len(body), auth) + body)
        assert answering.wait(30)
        waiting.close()  # leaves while the model computes its answer
        answered = client.post("/v1/completions", content=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                                        "content-type": "application/json"})
        assert answered.status_code == 200
        rows = logged_when(cfg, 3)
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert sorted(rows.status) == [200, 499, 499]
    assert 'status="499"} 2.0' in metrics and 'status="500"' not in metrics
    assert not [r for r in server_log.records if r.exc_info or r.levelno >= logging.ERROR]
    # The monitor counts them apart: no server error, no client error.
    measured = traffic_metrics(rows)
    assert (measured["error_rate"], measured["client_error_rate"], measured["disconnects"]) == (0.0, 0.0, 2.0)


def test_the_token_is_checked_before_the_body_is_read(classifier):
    url = str(classifier.base_url).rstrip("/")
    # The headers promise a body that never comes: the refusal must not wait for it.
    sock = _raw(url, _post_head("/v1/classify", 100_000))
    sock.settimeout(20)  # the body timeout (30 s) is further: a 408 would mean the body was waited for
    head = sock.recv(65536)
    sock.close()
    assert head.startswith(b"HTTP/1.1 401"), head


def test_an_empty_input_is_a_400_alone_in_a_list_and_in_a_shared_batch(causal, classifier):
    client, _ = causal
    alone = api_error(client.post("/v1/completions", json={"prompt": "", "max_tokens": 2}), 400)
    assert (alone["param"], alone["code"]) == ("prompt", "empty_input")
    listed = api_error(client.post("/v1/completions", json={"prompt": ["Define asthma.", ""], "max_tokens": 2}), 400)
    assert listed["param"] == "prompt.1"
    requests = [{"prompt": f"Question {i}?", "max_tokens": 3} for i in range(6)] + [{"prompt": "", "max_tokens": 3}]
    with ThreadPoolExecutor(len(requests)) as pool:
        statuses = list(pool.map(lambda body: client.post("/v1/completions", json=body).status_code, requests))
    assert statuses == [200] * 6 + [400]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert api_error(classifier.post("/v1/classify", json={"input": ""}, headers=headers), 400)["param"] == "input"


def test_a_request_the_model_cannot_answer_fails_alone_not_its_batch(folders, monkeypatch):
    """Dynamic batches (classifiers, images); tests/ftcore/test_decode_loop.py holds the continuous loop's case."""
    cfg = serve_cfg(folders["root"], "isolated", batching={"max_wait_ms": 500, "continuous": False})
    complete = Engine.complete

    def fails_on_poison(self, items):
        if any(item.prompt == "poison" for item in items):
            raise RuntimeError("the model cannot run this")
        return complete(self, items)

    monkeypatch.setattr(Engine, "complete", fails_on_poison)
    prompts = [f"Question {i}?" for i in range(6)] + ["poison"]
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(len(prompts)) as pool:
            statuses = list(pool.map(lambda p: client.post("/v1/completions", json={
                "prompt": p, "max_tokens": 3}).status_code, prompts))
        batches = metric(client, "ftflow_batch_size_count")
        single = metric(client, 'ftflow_batch_size_bucket{le="1.0"}')
    assert statuses == [200] * 6 + [500]
    assert batches > single  # some requests did share a batch with the poisoned one before it was tried alone


def test_temperatures_near_zero_answer_greedily(causal):
    client, _ = causal
    greedy = client.post("/v1/completions", json={"prompt": "Define asthma.", "max_tokens": 4, "temperature": 0})
    tiny = client.post("/v1/completions", json={"prompt": "Define asthma.", "max_tokens": 4, "temperature": 1e-300})
    assert tiny.status_code == 200, tiny.text  # dividing the logits by 1e-300 made NaN probabilities: a 500
    assert tiny.json()["choices"] == greedy.json()["choices"]


def test_slow_clients_are_cut_off_in_every_phase(folders):
    cfg = serve_cfg(folders["root"], "slow",
                    limits={"max_prompt_tokens": 64, "header_timeout_s": 1, "body_timeout_s": 1})
    with serving(str(folders["causal"]), cfg) as url:
        idle = [_raw(url, b"") for _ in range(5)]
        partial_headers = [_raw(url, b"POST /v1/completions HTTP/1.1\r\nHost: te") for _ in range(5)]
        partial_body = [_raw(url, _post_head("/v1/completions", 100) + b'{"pro') for _ in range(5)]
        kept_alive = []
        for _ in range(5):
            sock = _raw(url, b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /hea")  # the next request on the connection stalls in its request line
            kept_alive.append(sock)
        # Each is answered 408 and closed by the server (a recv that timed out would raise instead).
        for sock in idle + partial_headers + kept_alive:
            answer = _read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408") and b'"header_timeout"' in answer, answer
        for sock in partial_body:
            answer = _read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer, answer
        assert list(logged_when(cfg, 5).status) == [408] * 5


def test_prompts_are_counted_off_the_event_loop(causal, monkeypatch):
    """While a prompt's tokens are being counted (about a second for 1 MB of text) the server answers others."""
    client, _ = causal
    counting, release = threading.Event(), threading.Event()
    count_tokens = Engine.count_tokens

    def blocking_count(self, text):
        if text == "hold":
            counting.set()
            release.wait(60)
        return count_tokens(self, text)

    monkeypatch.setattr(Engine, "count_tokens", blocking_count)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.post, "/v1/completions", json={"prompt": "hold", "max_tokens": 2})
        try:
            assert counting.wait(30)
            assert httpx.get(client.base_url.join("/health"), timeout=10).json()["status"] == "ok"
        finally:
            release.set()
        assert held.result().status_code == 200


def test_a_damaged_copy_is_fetched_again_and_a_damaged_version_refused(folders):
    from ftcore import tracking, versions
    from ftcore.paths import home

    run = tracking.start_pipeline_run("serve-damage", "run", {"name": "serve-damage"}, {})
    version = versions.register_version(run, "damaged", folders["causal"], tags={})
    cfg = serve_cfg(folders["root"], "damaged")
    body = {"prompt": "Define asthma.", "max_tokens": 2}
    with serving(f"models:/damaged/{version}", cfg) as url:
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
    weights = home() / "registry" / "damaged" / version / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # a truncated cached copy (config.json still there)
    with serving(f"models:/damaged/{version}", cfg) as url:
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
    assert weights.stat().st_size == size  # fetched again

    [stored] = (home() / "mlartifacts").rglob("model.safetensors")
    stored.write_bytes(stored.read_bytes()[: size // 2])
    weights.unlink()
    with pytest.raises(UserError, match=rf"models:/damaged/{version}: .*damaged or truncated: model\.safetensors"), \
            serving(f"models:/damaged/{version}", cfg):
        pass
    stored.unlink()
    with pytest.raises(UserError, match=rf"models:/damaged/{version}: .*missing: model\.safetensors"), \
            serving(f"models:/damaged/{version}", cfg):
        pass


def test_a_chat_the_model_s_template_refuses_is_a_400(folders, tmp_path):
    strict = tmp_path / "strict"
    shutil.copytree(folders["causal"], strict)
    config = json.loads((strict / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System messages are not "
                               "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (strict / "tokenizer_config.json").write_text(json.dumps(config))
    cfg = serve_cfg(folders["root"], "strict")
    with serving(str(strict), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        refused = client.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "Be brief."},
                                                                         {"role": "user", "content": "Hi"}]})
        error = api_error(refused, 400)
        assert (error["param"], error["code"]) == ("messages", "invalid_chat")
        assert "System messages are not supported" in error["message"]
        assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 2}).status_code == 200
