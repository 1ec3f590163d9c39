"""The endpoint, tested over real HTTP on 127.0.0.1: every route, auth, limits, bad requests, the cache, batching,
the request log, a failing model, and 500 mixed requests without a single 5xx."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ftcore.errors import UserError
from ftcore.serve_config import ServeConfig, load_serve_config
from ftcore.serving.engine import Engine
from ftcore.serving.request_log import RequestLog
from ftcore.serving.server import bearer_token, serving
from tests.ftcore.serving_fixtures import causal_folder, classifier_folder

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    causal = causal_folder(root)
    return {"causal": causal, "classifier": classifier_folder(causal, root / "classifier"), "root": root}


def _cfg(root: Path, name: str, **fields) -> ServeConfig:
    base = {"request_log": {"url": f"sqlite:///{root / name}.db"}, "limits": {"max_prompt_tokens": 64}}
    return ServeConfig.model_validate(base | fields)


@pytest.fixture(scope="module")
def causal(folders):
    cfg = _cfg(folders["root"], "causal", batching={"max_wait_ms": 20})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, cfg


@pytest.fixture(scope="module")
def classifier(folders):
    cfg = _cfg(folders["root"], "classifier")
    with serving(str(folders["classifier"]), cfg, token=TOKEN) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict:
    """The documented error shape: the status and {"error": {"message", "type", "param", "code"}}."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _metric(client: httpx.Client, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_completions_answer_each_prompt_and_count_tokens(causal):
    client, _ = causal
    one = client.post("/v1/completions", json={"prompt": "What is hypertension?", "max_tokens": 5,
                                                "temperature": 0})
    assert one.status_code == 200
    body = one.json()
    assert body["object"] == "text_completion" and body["model"] == "base" and body["model_version"]
    [choice] = body["choices"]
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["text"], str)
    assert body["usage"]["prompt_tokens"] > 0 and 0 < body["usage"]["completion_tokens"] <= 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]

    # Greedy answers do not depend on what else shares the batch: alone and in a list they are the same.
    many = client.post("/v1/completions", json={"prompt": ["Define asthma.", "What is hypertension?"],
                                                 "max_tokens": 5, "temperature": 0}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert many["choices"][1]["text"] == choice["text"]


def test_stop_strings_end_the_answer(causal):
    client, _ = causal
    free = client.post("/v1/completions", json={"prompt": "Define asthma.", "max_tokens": 12,
                                                 "temperature": 0}).json()["choices"][0]["text"]
    assert len(free) > 2
    stop = free[2:4]
    cut = client.post("/v1/completions", json={"prompt": "Define asthma.", "max_tokens": 12, "temperature": 0,
                                                "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == free[:free.index(stop)] and cut["finish_reason"] == "stop"


def test_chat_completions_render_the_chat_template(causal):
    client, _ = causal
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define asthma."}],
        "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200
    [choice] = response.json()["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    # The chat's rendered prompt is longer than the user's words alone.
    assert response.json()["usage"]["prompt_tokens"] > 3
    bad_role = client.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert _error(bad_role, 400)["param"] == "messages.0.role"


def test_classify_gives_a_label_and_probabilities(classifier):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = classifier.post("/v1/classify", json={"input": ["free prize now", "see you at 5"]}, headers=headers)
    assert response.status_code == 200
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    for d in data:
        assert set(d["scores"]) == {"ham", "spam"} and abs(sum(d["scores"].values()) - 1) < 1e-4
        assert d["label"] == max(d["scores"], key=d["scores"].get)
    wrong = classifier.post("/v1/completions", json={"prompt": "x"}, headers=headers)
    assert _error(wrong, 400)["code"] == "wrong_endpoint"


def test_a_causal_model_refuses_classify(causal):
    client, _ = causal
    assert _error(client.post("/v1/classify", json={"input": "x"}), 400)["code"] == "wrong_endpoint"


def test_auth_is_required_when_a_token_is_set(classifier, causal):
    assert _error(classifier.post("/v1/classify", json={"input": "x"}), 401)["type"] == "authentication_error"
    wrong = classifier.post("/v1/classify", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
    assert _error(wrong, 401)["code"] == "invalid_token"
    assert _error(classifier.get("/metrics"), 401)
    assert classifier.get("/health").status_code == 200  # liveness probes carry no token
    # Without a token (the loopback default) no header is needed.
    client, _ = causal
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_auth_is_on_by_default_beyond_loopback(monkeypatch):
    monkeypatch.delenv("FTFLOW_SERVE_TOKEN", raising=False)
    assert bearer_token("127.0.0.1", None) == (None, False)
    assert bearer_token("localhost", None) == (None, False)
    token, generated = bearer_token("0.0.0.0", None)
    assert generated and len(token) >= 24
    assert bearer_token("0.0.0.0", "mine") == ("mine", False)
    monkeypatch.setenv("FTFLOW_SERVE_TOKEN", "from-env")
    assert bearer_token("10.0.0.5", None) == ("from-env", False)


def test_limits_say_what_was_exceeded(causal):
    client, _ = causal
    too_many_tokens = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10_000})
    error = _error(too_many_tokens, 400)
    assert (error["param"], error["code"]) == ("max_tokens", "max_tokens_exceeded") and "256" in error["message"]
    long_prompt = client.post("/v1/completions", json={"prompt": "asthma " * 200, "max_tokens": 2})
    error = _error(long_prompt, 400)
    assert error["code"] == "prompt_too_long" and "limits.max_prompt_tokens" in error["message"]
    many = client.post("/v1/completions", json={"prompt": ["x"] * 65, "max_tokens": 1})
    assert _error(many, 400)["code"] == "too_many_inputs"
    assert _error(client.post("/v1/completions", json={"prompt": [], "max_tokens": 1}), 400)["param"] == "prompt"


def test_an_oversized_body_is_refused_before_it_is_read(causal):
    client, cfg = causal
    big = json.dumps({"prompt": "x" * (cfg.limits.max_body_bytes + 10)})
    assert _error(client.post("/v1/completions", content=big,
                              headers={"content-type": "application/json"}), 413)["code"] == "body_too_large"

    # Sent in chunks, without a Content-Length, it is counted as it arrives.
    def chunks():
        for _ in range(20):
            yield b"x" * 100_000

    chunked = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert _error(chunked, 413)["type"] == "request_too_large"


@pytest.mark.parametrize(("body", "param", "code"), [
    ('{"prompt": ', None, "invalid_json"),
    ("not json at all", None, "invalid_json"),
    ('{"prompt": 5}', "prompt", "invalid_field"),
    ('{"prompt": "x", "max_tokens": "many"}', "max_tokens", "invalid_field"),
    ('{"prompt": "x", "temperature": -1}', "temperature", "invalid_field"),
    ('{"prompt": "x", "n": 3}', "n", "invalid_field"),
    ('{"prompt": "x", "stream": true}', "stream", "invalid_field"),
    ("{}", "prompt", "invalid_field"),
    ("[1, 2]", None, "invalid_field"),
])
def test_malformed_requests_get_400_naming_the_field(causal, body, param, code):
    client, _ = causal
    error = _error(client.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_unknown_routes_and_methods_are_json_errors(causal):
    client, _ = causal
    assert _error(client.get("/v1/nothing"), 404)["type"] == "not_found_error"
    assert _error(client.get("/v1/completions"), 405)["type"] == "method_not_allowed"


def test_openapi_spec_documents_every_endpoint(causal):
    client, _ = causal
    spec = client.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/classify", "/health", "/metrics"} <= set(spec["paths"])
    assert "ErrorBody" in spec["components"]["schemas"]


def test_greedy_answers_are_cached_per_model_version(causal):
    client, _ = causal
    body = {"prompt": "Is the cache warm?", "max_tokens": 6, "temperature": 0}
    hits = _metric(client, "ftflow_cache_hits_total")
    first = client.post("/v1/completions", json=body).json()
    second = client.post("/v1/completions", json=body).json()
    assert second["choices"] == first["choices"]
    assert _metric(client, "ftflow_cache_hits_total") == hits + 1
    assert 0 < _metric(client, "ftflow_cache_hit_rate") <= 1
    sampled = dict(body, temperature=0.8)
    client.post("/v1/completions", json=sampled)
    client.post("/v1/completions", json=sampled)
    assert _metric(client, "ftflow_cache_hits_total") == hits + 1  # sampling is never cached


def test_concurrent_requests_share_batches(causal):
    client, _ = causal
    batches, requests = _metric(client, "ftflow_batch_size_count"), _metric(client, "ftflow_batch_size_sum")
    prompts = [f"Concurrent question {i}?" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda p: client.post("/v1/completions", json={
            "prompt": p, "max_tokens": 8, "temperature": 0}).status_code, prompts))
    assert statuses == [200] * 16
    new_batches = _metric(client, "ftflow_batch_size_count") - batches
    new_requests = _metric(client, "ftflow_batch_size_sum") - requests
    assert new_requests == 16 and new_batches < 16  # some requests were generated together


def test_a_failing_model_gives_500_json_and_the_server_goes_on(folders, monkeypatch):
    cfg = _cfg(folders["root"], "failing")
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        def out_of_memory(self, items):
            raise RuntimeError("CUDA out of memory")

        with monkeypatch.context() as patch:  # the server runs in this process: its engine fails from now on
            patch.setattr(Engine, "complete", out_of_memory)
            error = _error(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}), 500)
        # The client learns the kind of failure; the details stay in the server log and the request log.
        assert error["type"] == "server_error" and "RuntimeError" in error["message"]
        assert "CUDA" not in error["message"]
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
        assert client.get("/health").json()["status"] == "ok"
    logged = RequestLog(cfg.request_log.resolved_url()).read()
    assert list(logged.status) == [500, 200] and "CUDA out of memory" in logged.error[0]


def test_five_hundred_mixed_requests_get_no_5xx_and_are_all_logged(folders):
    cfg = _cfg(folders["root"], "mixed", batching={"max_wait_ms": 5})
    rng = random.Random(0)
    good = [
        ("POST", "/v1/completions", {"prompt": "What is asthma?", "max_tokens": 4, "temperature": 0}),
        ("POST", "/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 3, "temperature": 0.7}),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    ]
    bad = [
        ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 100_000}),
        ("POST", "/v1/completions", {"prompt": 7}),
        ("POST", "/v1/classify", {"input": "x"}),
        ("POST", "/v1/chat/completions", {"messages": []}),
        ("POST", "/v1/completions", "{broken"),
    ]
    plan = [rng.choice(good) if rng.random() < 0.7 else rng.choice(bad) for _ in range(500)]
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=120) as client:
        def send(call):
            method, path, body = call
            content = body if isinstance(body, str) else json.dumps(body)
            return client.request(method, path, content=content, headers={"content-type": "application/json"})

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(send, plan))
    statuses = [r.status_code for r in responses]
    assert not [s for s in statuses if s >= 500]
    expected = [200 if call in good else 400 for call in plan]
    assert statuses == expected
    for r in responses:
        assert ("error" in r.json()) == (r.status_code != 200)

    logged = RequestLog(cfg.request_log.resolved_url()).read()
    assert len(logged) == 500 and sorted(logged["status"]) == sorted(statuses)
    ok = logged[logged.status == 200]
    assert (ok.tokens_in > 0).all() and (ok.tokens_out > 0).all() and ok.input.notna().all()
    assert logged[logged.status == 400].error.notna().all()
    assert set(logged.endpoint) == {"completions", "chat.completions", "classify"}


def test_request_log_keeps_text_for_a_sample_only(folders):
    cfg = _cfg(folders["root"], "sampled", request_log={"url": f"sqlite:///{folders['root'] / 'sampled'}.db",
                                                        "sample_rate": 0.0})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):
            assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    logged = RequestLog(cfg.request_log.resolved_url()).read()
    assert len(logged) == 3 and logged.input.isna().all() and logged.output.isna().all()
    assert (logged.latency_s > 0).all()


def test_bad_serving_config_and_uri_are_one_line_errors(tmp_path, folders):
    bad = tmp_path / "serve.yaml"
    bad.write_text("batching: {max_batch_size: 0}\ncache: {size: 3}\n")
    with pytest.raises(UserError, match=r"serve.yaml: batching.max_batch_size: .*; cache.size: unknown field"):
        load_serve_config(bad)
    with pytest.raises(UserError, match="neither models:/NAME@ALIAS"), serving(str(tmp_path / "missing"),
                                                                              ServeConfig()):
        pass
    broken_log = _cfg(tmp_path, "x", request_log={"url": "nosuchdb://x"})
    with pytest.raises(UserError, match=r"request_log\.url: cannot open"), serving(str(folders["causal"]), broken_log):
        pass


def test_the_port_is_free_again_after_the_block(folders):
    cfg = _cfg(folders["root"], "port")
    with serving(str(folders["causal"]), cfg) as url:
        port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_server_follows_the_alias_when_it_moves(folders):
    from ftcore import tracking

    run = tracking.start_pipeline_run("serve-test", "run", {"name": "serve-test"}, {})
    first = tracking.register_version(run, "served", folders["causal"], tags={})
    tracking.set_alias("served", tracking.CHAMPION, first)
    cfg = _cfg(folders["root"], "reload", reload_interval_s=0.2)
    body = {"prompt": "Which version?", "max_tokens": 3, "temperature": 0}
    with serving("models:/served@champion", cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["version"] == first
        assert client.post("/v1/completions", json=body).json()["model_version"] == first
        second = tracking.register_version(run, "served", folders["causal"], tags={})
        tracking.set_alias("served", tracking.CHAMPION, second)
        deadline = time.monotonic() + 30
        while client.get("/health").json()["version"] != second:
            assert time.monotonic() < deadline, "the server did not load the version the alias moved to"
            time.sleep(0.1)
        hits = _metric(client, "ftflow_cache_hits_total")
        assert client.post("/v1/completions", json=body).json()["model_version"] == second
        assert _metric(client, "ftflow_cache_hits_total") == hits  # the old version's answer is not reused
        assert _metric(client, "ftflow_model_reloads_total") == 1
        assert f'ftflow_model_info{{model="served",version="{second}"}} 1.0' in client.get("/metrics").text
    versions = set(RequestLog(cfg.request_log.resolved_url()).read().version)
    assert versions == {first, second}
    with pytest.raises(UserError, match="no version with alias 'nope'"), serving("models:/served@nope", cfg):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ftflow_serve_command(folders, tmp_path):
    ftflow = Path(sys.executable).parent / "ftflow"
    bad = subprocess.run([ftflow, "serve", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "neither models:/NAME@ALIAS" in bad.stderr

    port = _free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(f"request_log: {{url: 'sqlite:///{tmp_path / 'cli.db'}'}}\n")
    server = subprocess.Popen([ftflow, "serve", str(folders["causal"]), "--port", str(port), "--config", str(config),
                               "--token", TOKEN, "--no-batching"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                time.sleep(0.5)
        assert health.json()["model"] == "base"
        url = f"http://127.0.0.1:{port}/v1/completions"
        assert httpx.post(url, json={"prompt": "x", "max_tokens": 2}).status_code == 401
        answered = httpx.post(url, json={"prompt": "x", "max_tokens": 2}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answered.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert len(RequestLog(f"sqlite:///{tmp_path / 'cli.db'}").read()) == 2


def test_request_log_on_postgresql(postgres_url):
    """The production store: the same table through SQLAlchemy on a real PostgreSQL server."""
    import uuid

    from sqlalchemy.engine import make_url

    from ftcore.serving.request_log import RequestLogWriter, RequestRecord

    url = make_url(postgres_url).set(password=os.environ["FTFLOW_TEST_PGPASSWORD"])
    log = RequestLog(url.render_as_string(hide_password=False))
    model = f"pg-{uuid.uuid4().hex[:8]}"  # the table outlives the test: its rows are told apart by model
    writer = RequestLogWriter(log, sample_rate=1.0)
    for i in range(5):
        writer.record(RequestRecord(ts=1000.0 + i, model=model, version="1", endpoint="completions",
                                    status=200 if i < 4 else 503, latency_s=0.1 * i, tokens_in=3, tokens_out=i,
                                    input=f"question {i}", output=f"answer {i}"))
    writer.close()
    rows = RequestLog(url.render_as_string(hide_password=False)).read(since=1001.0, until=1004.0, model=model)
    assert rows["input"].tolist() == ["question 1", "question 2", "question 3"]
    assert rows["latency_s"].round(3).tolist() == [0.1, 0.2, 0.3]
    assert len(RequestLog(url.render_as_string(hide_password=False)).read(model=model)) == 5


def test_counting_tokens_while_a_batch_generates_is_safe(folders):
    """The event loop counts each new request's tokens while the model thread tokenizes a padded batch: a fast
    tokenizer's padding setting is shared state, so the two must not share one tokenizer (this failed 1% of
    requests under load before)."""
    import threading

    from ftcore.serving.engine import Completion, load_engine

    engine = load_engine(folders["causal"], "base", "1")
    prompts = [f"Question {i}: {'what is it ' * (i % 7)}?" for i in range(16)]
    stop, failures = threading.Event(), []

    def count():
        while not stop.is_set():
            for p in prompts:
                engine.count_tokens(p)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        for _ in range(30):
            try:
                engine.complete([Completion(p, 2) for p in prompts])
            except ValueError as e:
                failures.append(e)
    finally:
        stop.set()
        counter.join()
    assert not failures, failures[0]


def test_the_request_log_url_comes_from_the_environment_when_the_config_names_none(monkeypatch, tmp_path):
    from ftcore.serve_config import RequestLogConfig

    monkeypatch.delenv("FTFLOW_REQUEST_LOG_URL", raising=False)
    assert RequestLogConfig().resolved_url().endswith("/requests.db")
    monkeypatch.setenv("FTFLOW_REQUEST_LOG_URL", f"sqlite:///{tmp_path}/env.db")
    assert RequestLogConfig().resolved_url() == f"sqlite:///{tmp_path}/env.db"
    assert RequestLogConfig(url="sqlite:///x.db").resolved_url() == "sqlite:///x.db"  # the config wins


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


def _logged_when(cfg: ServeConfig, count: int):
    """The request log once it holds `count` rows (the writer appends in the background)."""
    deadline = time.monotonic() + 30
    while len(rows := RequestLog(cfg.request_log.resolved_url()).read()) < count:
        assert time.monotonic() < deadline, f"{len(rows)} of {count} requests logged"
        time.sleep(0.1)
    return rows


@pytest.fixture
def server_log(caplog):
    """What the in-process server logs, uvicorn's own logger (which does not propagate) included."""
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    yield caplog
    uvicorn_logger.removeHandler(caplog.handler)


def test_a_client_that_leaves_is_recorded_as_499_and_is_no_server_error(folders, monkeypatch, server_log):
    from ftcore.monitor.window import traffic_metrics

    cfg = _cfg(folders["root"], "disconnects")
    answering = threading.Event()
    complete = Engine.complete

    def slow_complete(self, items):
        answering.set()
        time.sleep(1.0)  # long enough for the client below to leave while its answer is computed
        return complete(self, items)

    monkeypatch.setattr(Engine, "complete", slow_complete)
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
        rows = _logged_when(cfg, 3)
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
    alone = _error(client.post("/v1/completions", json={"prompt": "", "max_tokens": 2}), 400)
    assert (alone["param"], alone["code"]) == ("prompt", "empty_input")
    listed = _error(client.post("/v1/completions", json={"prompt": ["Define asthma.", ""], "max_tokens": 2}), 400)
    assert listed["param"] == "prompt.1"
    requests = [{"prompt": f"Question {i}?", "max_tokens": 3} for i in range(6)] + [{"prompt": "", "max_tokens": 3}]
    with ThreadPoolExecutor(len(requests)) as pool:
        statuses = list(pool.map(lambda body: client.post("/v1/completions", json=body).status_code, requests))
    assert statuses == [200] * 6 + [400]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert _error(classifier.post("/v1/classify", json={"input": ""}, headers=headers), 400)["param"] == "input"


def test_a_request_the_model_cannot_answer_fails_alone_not_its_batch(folders, monkeypatch):
    cfg = _cfg(folders["root"], "isolated", batching={"max_wait_ms": 500})
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
        batches = _metric(client, "ftflow_batch_size_count")
        single = _metric(client, 'ftflow_batch_size_bucket{le="1.0"}')
    assert statuses == [200] * 6 + [500]
    assert batches > single  # some requests did share a batch with the poisoned one before it was tried alone


def test_temperatures_near_zero_answer_greedily(causal):
    client, _ = causal
    greedy = client.post("/v1/completions", json={"prompt": "Define asthma.", "max_tokens": 4, "temperature": 0})
    tiny = client.post("/v1/completions", json={"prompt": "Define asthma.", "max_tokens": 4, "temperature": 1e-300})
    assert tiny.status_code == 200, tiny.text  # dividing the logits by 1e-300 made NaN probabilities: a 500
    assert tiny.json()["choices"] == greedy.json()["choices"]


def test_slow_clients_are_cut_off_in_every_phase(folders):
    cfg = _cfg(folders["root"], "slow", limits={"max_prompt_tokens": 64, "header_timeout_s": 1, "body_timeout_s": 1})
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
        assert list(_logged_when(cfg, 5).status) == [408] * 5


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
    from ftcore import tracking
    from ftcore.paths import home

    run = tracking.start_pipeline_run("serve-damage", "run", {"name": "serve-damage"}, {})
    version = tracking.register_version(run, "damaged", folders["causal"], tags={})
    cfg = _cfg(folders["root"], "damaged")
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
    with serving(str(strict), _cfg(folders["root"], "strict")) as url, httpx.Client(base_url=url, timeout=60) as client:
        refused = client.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "Be brief."},
                                                                         {"role": "user", "content": "Hi"}]})
        error = _error(refused, 400)
        assert (error["param"], error["code"]) == ("messages", "invalid_chat")
        assert "System messages are not supported" in error["message"]
        assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 2}).status_code == 200
