"""The endpoint, tested over real HTTP on 127.0.0.1: every route, auth, the cache, batching, the request log, following
an alias, the `ftflow serve` command, and 500 mixed requests without a single 5xx. What it refuses and how it
survives faults: test_serving_faults.py."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ftcore.errors import UserError
from ftcore.serving.request_log import RequestLog
from ftcore.serving.server import bearer_token, serving
from tests.ftcore.serving_fixtures import (
    TOKEN,
    api_error,
    logged_when,
    lora_version_folder,
    metric,
    register,
    serve_cfg,
)


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
    assert api_error(bad_role, 400)["param"] == "messages.0.role"


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
    assert api_error(wrong, 400)["code"] == "wrong_endpoint"


def test_auth_is_required_when_a_token_is_set(classifier, causal):
    assert api_error(classifier.post("/v1/classify", json={"input": "x"}), 401)["type"] == "authentication_error"
    wrong = classifier.post("/v1/classify", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
    assert api_error(wrong, 401)["code"] == "invalid_token"
    assert api_error(classifier.get("/metrics"), 401)
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


def test_openapi_spec_documents_every_endpoint(causal):
    client, _ = causal
    spec = client.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/classify", "/health", "/metrics"} <= set(spec["paths"])
    assert "ErrorBody" in spec["components"]["schemas"]


def test_greedy_answers_are_cached_per_model_version(causal):
    client, _ = causal
    body = {"prompt": "Is the cache warm?", "max_tokens": 6, "temperature": 0}
    hits = metric(client, "ftflow_cache_hits_total")
    first = client.post("/v1/completions", json=body).json()
    second = client.post("/v1/completions", json=body).json()
    assert second["choices"] == first["choices"]
    assert metric(client, "ftflow_cache_hits_total") == hits + 1
    assert 0 < metric(client, "ftflow_cache_hit_rate") <= 1
    sampled = dict(body, temperature=0.8)
    client.post("/v1/completions", json=sampled)
    client.post("/v1/completions", json=sampled)
    assert metric(client, "ftflow_cache_hits_total") == hits + 1  # sampling is never cached


def test_concurrent_requests_share_batches(causal):
    client, _ = causal
    batches, requests = metric(client, "ftflow_batch_size_count"), metric(client, "ftflow_batch_size_sum")
    prompts = [f"Concurrent question {i}?" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda p: client.post("/v1/completions", json={
            "prompt": p, "max_tokens": 8, "temperature": 0}).status_code, prompts))
    assert statuses == [200] * 16
    new_batches = metric(client, "ftflow_batch_size_count") - batches
    new_requests = metric(client, "ftflow_batch_size_sum") - requests
    assert new_requests == 16 and new_batches < 16  # some requests were generated together


def test_five_hundred_mixed_requests_get_no_5xx_and_are_all_logged(folders, tmp_path):
    """Plain, streamed and adapter requests, good and bad, and clients that leave their streams, 16 at a time."""
    adapters = {name: f"models:/{name}/{register(name, lora_version_folder(folders['causal'], tmp_path / name, seed))}"
                for name, seed in (("support", 1), ("legal", 2))}
    cfg = serve_cfg(folders["root"], "mixed", batching={"max_wait_ms": 5}, adapters={"serve": adapters})
    rng = random.Random(0)
    streamed = {"prompt": "Define asthma.", "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    good = [
        ("/v1/completions", {"prompt": "What is asthma?", "max_tokens": 4, "temperature": 0}),
        ("/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 3, "temperature": 0.7}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        ("/v1/completions", {"prompt": "What is asthma?", "max_tokens": 4, "model": "support"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                  "model": "legal"}),
        ("/v1/completions", streamed),
        ("/v1/completions", {**streamed, "model": "legal", "ignore_eos": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
                                  "model": "support", "seed": 3}),
    ]
    bad = [
        ("/v1/completions", {"prompt": "x", "max_tokens": 100_000}),
        ("/v1/completions", {"prompt": 7}),
        ("/v1/classify", {"input": "x"}),
        ("/v1/chat/completions", {"messages": []}),
        ("/v1/completions", "{broken"),
        ("/v1/completions", {"prompt": ["a", "b"], "stream": True}),
        ("/v1/completions", {"prompt": "x", "model": "billing"}),
    ]
    leaves = ("/v1/completions", {**streamed, "max_tokens": 64, "ignore_eos": True})  # reads one chunk, then goes
    plan = [rng.choice(good) if rng.random() < 0.7 else rng.choice(bad) if rng.random() < 0.9 else leaves
            for _ in range(500)]
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=120) as client:
        def send(call):
            path, body = call
            content = body if isinstance(body, str) else json.dumps(body)
            with client.stream("POST", path, content=content, headers={"content-type": "application/json"}) as r:
                if call is leaves:
                    next(r.iter_lines())
                    return r.status_code, None
                return r.status_code, r.read().decode()

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(send, plan))
    statuses = [status for status, _ in responses]
    assert not [s for s in statuses if s >= 500]
    expected = [200 if call in good or call is leaves else 404 if "billing" in str(call) else 400 for call in plan]
    assert statuses == expected
    for (_, body), (status, text) in zip(plan, responses, strict=True):
        if isinstance(body, dict) and body.get("stream") and status == 200 and text is not None:
            assert text.endswith("data: [DONE]\n\n") and '"error"' not in text
        elif text is not None:
            assert ("error" in json.loads(text)) == (status != 200)

    logged = logged_when(cfg, 500)
    left = sum(call is leaves for call in plan)
    assert sorted(logged["status"]) == sorted([s for s, call in zip(statuses, plan, strict=True)
                                               if call is not leaves] + [499] * left)
    ok = logged[logged.status == 200]
    assert (ok.tokens_in > 0).all() and (ok.tokens_out > 0).all() and ok.input.notna().all()
    assert logged[logged.status >= 400].error.notna().all()
    assert set(logged.endpoint) == {"completions", "chat.completions", "classify"}
    assert set(ok.model) == {"base", "support", "legal"}


def test_request_log_keeps_text_for_a_sample_only(folders):
    cfg = serve_cfg(folders["root"], "sampled", request_log={"url": f"sqlite:///{folders['root'] / 'sampled'}.db",
                                                        "sample_rate": 0.0})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):
            assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    logged = RequestLog(cfg.request_log.resolved_url()).read()
    assert len(logged) == 3 and logged.input.isna().all() and logged.output.isna().all()
    assert (logged.latency_s > 0).all()


def test_the_port_is_free_again_after_the_block(folders):
    cfg = serve_cfg(folders["root"], "port")
    with serving(str(folders["causal"]), cfg) as url:
        port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_server_follows_the_alias_when_it_moves(folders):
    from ftcore import tracking, versions

    run = tracking.start_pipeline_run("serve-test", "run", {"name": "serve-test"}, {})
    first = versions.register_version(run, "served", folders["causal"], tags={})
    versions.set_alias("served", versions.CHAMPION, first)
    cfg = serve_cfg(folders["root"], "reload", reload_interval_s=0.2)
    body = {"prompt": "Which version?", "max_tokens": 3, "temperature": 0}
    with serving("models:/served@champion", cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["version"] == first
        assert client.post("/v1/completions", json=body).json()["model_version"] == first
        second = versions.register_version(run, "served", folders["causal"], tags={})
        versions.set_alias("served", versions.CHAMPION, second)
        deadline = time.monotonic() + 30
        while client.get("/health").json()["version"] != second:
            assert time.monotonic() < deadline, "the server did not load the version the alias moved to"
            time.sleep(0.1)
        hits = metric(client, "ftflow_cache_hits_total")
        assert client.post("/v1/completions", json=body).json()["model_version"] == second
        assert metric(client, "ftflow_cache_hits_total") == hits  # the old version's answer is not reused
        assert metric(client, "ftflow_model_reloads_total") == 1
        assert f'ftflow_model_info{{model="served",version="{second}"}} 1.0' in client.get("/metrics").text
    logged = set(RequestLog(cfg.request_log.resolved_url()).read().version)
    assert logged == {first, second}
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
    from ftcore.serving.config import RequestLogConfig

    monkeypatch.delenv("FTFLOW_REQUEST_LOG_URL", raising=False)
    assert RequestLogConfig().resolved_url().endswith("/requests.db")
    monkeypatch.setenv("FTFLOW_REQUEST_LOG_URL", f"sqlite:///{tmp_path}/env.db")
    assert RequestLogConfig().resolved_url() == f"sqlite:///{tmp_path}/env.db"
    assert RequestLogConfig(url="sqlite:///x.db").resolved_url() == "sqlite:///x.db"  # the config wins


def test_weights_served_in_bfloat16_take_half_the_memory_and_answer(folders):
    cfg = serve_cfg(folders["root"], "bf16", dtype="bfloat16")
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["dtype"] == "bfloat16"
        answer = client.post("/v1/completions", json={"prompt": "What is asthma?", "max_tokens": 6, "temperature": 0,
                                                      "ignore_eos": True, "stream": False})
        streamed = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                             "max_tokens": 4, "stream": True})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 6
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    with pytest.raises(ValueError, match="int8 export keeps its own types"):
        serve_cfg(folders["root"], "x", variant="int8", dtype="float16")
