"""Bad input a user can cause in serving: requests to a running `ftflow serve` (each a 4xx with a JSON error naming the
field, and no traceback in the server's log), and `ftflow serve` invocations that cannot serve (exit 2, one `error:`
line naming the version or option, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.bad_input.harness import REPO, Outcome, assert_user_error, invoke_process
from tests.ftcore.serving_fixtures import causal_folder

TOKEN = "bad-input-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("serve-bad-input"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ftflow serve` as a process, its output in a file: what an operator would read."""

    def __init__(self, model: Path, folder: Path):
        self.log = folder / "server.log"
        self.port = _free_port()
        config = folder / "serve.yaml"
        config.write_text(json.dumps({"request_log": {"url": f"sqlite:///{folder / 'requests.db'}"},
                                      "limits": {"max_prompt_tokens": 64}}))
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "serve", str(model), "--port", str(self.port), "--config",
                 str(config), "--token", TOKEN], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "FTFLOW_HOME": str(folder / "home")})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(f"{self.url}/health", timeout=5)
                return
            except httpx.TransportError:
                assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.5)

    def logged(self) -> int:
        return len(self.log.read_text())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    running = Server(model, tmp_path_factory.mktemp("serve-bad-input-server"))
    yield running
    running.stop()


DEEP = "[" * 100_000 + "]" * 100_000
MESSAGES = [{"role": "user", "content": "Define asthma."}]

# (case, path, body (str: sent as is), headers, status, what the error names: its param, or words of its message)
REQUESTS = [
    ("truncated JSON", "/v1/completions", '{"prompt": ', JSON, 400, "not valid JSON"),
    ("not JSON at all", "/v1/completions", "prompt=hello", JSON, 400, "not valid JSON"),
    ("JSON nested 100,000 deep", "/v1/completions", '{"prompt": ' + DEEP + "}", JSON, 400, "parsing the body"),
    ("a number with 5,000 digits", "/v1/completions", '{"prompt": "x", "max_tokens": ' + "9" * 5000 + "}", JSON,
     400, "parsing the body"),
    ("a JSON array as the body", "/v1/completions", "[1, 2]", JSON, 400, "body"),
    ("no prompt", "/v1/completions", {}, JSON, 400, "prompt"),
    ("prompt of the wrong type", "/v1/completions", {"prompt": 5}, JSON, 400, "prompt"),
    ("prompt list of numbers", "/v1/completions", {"prompt": [1, 2]}, JSON, 400, "prompt"),
    ("an empty prompt", "/v1/completions", {"prompt": ""}, JSON, 400, "prompt"),
    ("an empty prompt among others", "/v1/completions", {"prompt": ["Define asthma.", ""]}, JSON, 400, "prompt.1"),
    ("an empty prompt list", "/v1/completions", {"prompt": []}, JSON, 400, "prompt"),
    ("a prompt over the token limit", "/v1/completions", {"prompt": "asthma " * 500}, JSON, 400, "prompt"),
    ("more prompts than limits.max_batch_inputs", "/v1/completions", {"prompt": ["x"] * 65}, JSON, 400, "prompt"),
    ("a lone surrogate in the prompt", "/v1/completions", '{"prompt": "\\ud800 asthma"}', JSON, 400, "prompt"),
    ("a body over limits.max_body_bytes", "/v1/completions", {"prompt": "x" * 1_100_000}, JSON, 413,
     "limits.max_body_bytes"),
    ("max_tokens 0", "/v1/completions", {"prompt": "x", "max_tokens": 0}, JSON, 400, "max_tokens"),
    ("max_tokens as text", "/v1/completions", {"prompt": "x", "max_tokens": "many"}, JSON, 400, "max_tokens"),
    ("max_tokens over limits.max_new_tokens", "/v1/completions", {"prompt": "x", "max_tokens": 100_000}, JSON, 400,
     "max_tokens"),
    ("max_tokens fractional", "/v1/completions", {"prompt": "x", "max_tokens": 2.5}, JSON, 400, "max_tokens"),
    ("a negative temperature", "/v1/completions", {"prompt": "x", "temperature": -1}, JSON, 400, "temperature"),
    ("temperature over 2", "/v1/completions", {"prompt": "x", "temperature": 2.5}, JSON, 400, "temperature"),
    ("temperature NaN", "/v1/completions", '{"prompt": "x", "temperature": NaN}', JSON, 400, "temperature"),
    ("top_p 0", "/v1/completions", {"prompt": "x", "top_p": 0}, JSON, 400, "top_p"),
    ("stop of the wrong type", "/v1/completions", {"prompt": "x", "stop": 5}, JSON, 400, "stop"),
    ("n other than 1", "/v1/completions", {"prompt": "x", "n": 2}, JSON, 400, "n"),
    ("streaming several prompts", "/v1/completions", {"prompt": ["x", "y"], "stream": True}, JSON, 400, "prompt"),
    ("streaming with n 2", "/v1/completions", {"prompt": "x", "stream": True, "n": 2}, JSON, 400, "n"),
    ("a stop list over 16", "/v1/completions", {"prompt": "x", "stop": ["a"] * 17}, JSON, 400, "stop"),
    ("min_tokens negative", "/v1/completions", {"prompt": "x", "min_tokens": -1}, JSON, 400, "min_tokens"),
    ("an unknown adapter", "/v1/completions", {"prompt": "x", "model": "billing"}, JSON, 404, "billing"),
    ("no messages", "/v1/chat/completions", {"messages": []}, JSON, 400, "messages"),
    ("an unknown role", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, JSON, 400,
     "messages.0.role"),
    ("an unknown field in a message", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x", "mood": "calm"}]}, JSON, 400, "messages.0.mood"),
    ("a lone surrogate in a message", "/v1/chat/completions",
     '{"messages": [{"role": "user", "content": "\\udfff"}]}', JSON, 400, "messages.0.content"),
    ("chat max_tokens over the limit", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 100_000}, JSON,
     400, "max_tokens"),
    ("classify on a causal model", "/v1/classify", {"input": "x"}, JSON, 400, "/v1/completions"),
    ("content-type text/plain", "/v1/completions", {"prompt": "x"}, {"content-type": "text/plain"}, 415,
     "content-type"),
    ("a form body", "/v1/completions", "prompt=x", {"content-type": "application/x-www-form-urlencoded"}, 415,
     "content-type"),
    ("no content-type", "/v1/completions", {"prompt": "x"}, {}, 415, "content-type"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "names"), [case[1:] for case in REQUESTS],
                         ids=[case[0] for case in REQUESTS])
def test_bad_requests_get_a_4xx_json_error_naming_the_field(server, path, body, headers, status, names):
    content = body if isinstance(body, str) else json.dumps(body)
    logged = server.logged()
    response = httpx.post(f"{server.url}{path}", content=content.encode("utf-8", "surrogatepass"),
                          headers={**AUTH, **headers}, timeout=120)
    _assert_refused(server, logged, response, status, names)


@pytest.mark.parametrize(("case", "authorization"), [("no token", None), ("a wrong token", "Bearer nope"),
                                                     ("another scheme", f"Basic {TOKEN}")])
def test_requests_without_the_token_get_a_401(server, case, authorization):
    headers = {**JSON, **({"Authorization": authorization} if authorization else {})}
    logged = server.logged()
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}, headers=headers, timeout=60)
    _assert_refused(server, logged, response, 401, "Authorization")


def test_a_wrong_method_is_a_405_json_error(server):
    logged = server.logged()
    _assert_refused(server, logged, httpx.get(f"{server.url}/v1/completions", headers=AUTH, timeout=60), 405,
                    "/v1/completions")


@pytest.mark.parametrize("raw", [b"HELLO THERE\r\n\r\n",
                                 b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n"],
                         ids=["not a request line", "a Content-Length that is no number"])
def test_bytes_that_are_not_http_get_a_json_400(server, raw):
    logged = server.logged()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    response = httpx.Response(int(head.split()[1]), content=body, headers={"content-type": "application/json"})
    _assert_refused(server, logged, response, 400, "HTTP")


def _assert_refused(server: Server, logged: int, response: httpx.Response, status: int, names: str) -> None:
    """The refusal, and nothing alarming in what the server logged since `logged` (its log's length before)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert names in (error["param"] or "") or names in error["message"], error
    log = server.log.read_text()[logged:]  # a failure is logged (and flushed) before its answer is sent
    assert "Traceback" not in log and "ERROR" not in log, log


# --- `ftflow serve` invocations -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(model, tmp_path_factory) -> Path:
    """An FTFLOW_HOME whose registry holds `whole` v1, `damaged` v1 (its weights cut in half in the artifact store)
    and `gone` v1 (its files deleted from the artifact store)."""
    from ftcore import tracking, versions

    home = tmp_path_factory.mktemp("serve-registry")
    stored = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTFLOW_HOME", str(home))
        for name in ("whole", "damaged", "gone"):
            run = tracking.start_pipeline_run("serve-bad-input", name, {"name": name}, {})
            versions.register_version(run, name, model, tags={})
            [stored[name]] = (home / "mlartifacts").rglob(f"{run}/artifacts/model")
    weights = stored["damaged"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.rmtree(stored["gone"])
    return home


def _serve(args: list[str], home: Path) -> Outcome:
    return invoke_process(["serve", *args], env={"FTFLOW_HOME": str(home)}, timeout=300)


def test_a_version_that_does_not_exist(registry):
    assert_user_error(_serve(["models:/whole/7", "--port", "0"], registry), "'whole'", "no version 7")


def test_an_alias_that_does_not_exist(registry):
    assert_user_error(_serve(["models:/whole@nope", "--port", "0"], registry), "'nope'")


def test_a_version_whose_files_are_damaged(registry):
    assert_user_error(_serve(["models:/damaged/1", "--port", "0"], registry), "models:/damaged/1",
                      "damaged or truncated: model.safetensors")


def test_a_version_whose_files_are_gone(registry):
    assert_user_error(_serve(["models:/gone/1", "--port", "0"], registry), "models:/gone/1")


def test_a_folder_with_a_truncated_weights_file(model, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in model.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_user_error(_serve([str(broken), "--port", "0"], tmp_path / "home"), str(broken))


@pytest.mark.parametrize("port", ["99999", "-5", "65536"])
def test_a_port_out_of_range(model, tmp_path, port):
    assert_user_error(_serve([str(model), "--port", port], tmp_path / "home"), f"--port {port}")


def test_a_port_in_use_is_refused_before_the_model_loads(model, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outcome = _serve([str(model), "--port", str(port)], tmp_path / "home")
    assert_user_error(outcome, f"--port {port}", "in use")
    assert "loaded" not in outcome.stderr + outcome.stdout


def test_an_address_this_machine_does_not_have(model, tmp_path):
    assert_user_error(_serve([str(model), "--host", "192.0.2.1", "--port", "0"], tmp_path / "home"),
                      "--host 192.0.2.1")


@pytest.mark.parametrize(("content", "names"), [
    ("cache: {size: 3}\n", "cache.size"),
    ("limits: {body_timeout_s: 0}\n", "limits.body_timeout_s"),
    ("limits: {header_timeout_s: forever}\n", "limits.header_timeout_s"),
    ("batching: [unclosed\n", "not valid YAML"),
    ("dtype: float8\n", "dtype"),
    ("cache: {enabled: true}\ncache: {enabled: false}\n", "duplicate key 'cache'"),
])
def test_a_bad_config_file(model, tmp_path, content, names):
    config = tmp_path / "serve.yaml"
    config.write_text(content)
    assert_user_error(_serve([str(model), "--config", str(config), "--port", "0"], tmp_path / "home"),
                      "serve.yaml", names)


@pytest.mark.parametrize(("adapter", "names"), [
    ("support", "NAME=models:/MODEL@ALIAS"),
    ("sup port=models:/support@champion", "letters, digits"),
    ("support=/some/folder", "NAME=models:/MODEL@ALIAS"),
    ("support=models:/support@champion", "no version with alias 'champion'"),
])
def test_a_bad_adapter_option(model, tmp_path, adapter, names):
    assert_user_error(_serve([str(model), "--adapter", adapter, "--port", "0"], tmp_path / "home"), "--adapter",
                      names)


def test_all_versions_of_a_model_that_is_not_registered(model, tmp_path):
    assert_user_error(_serve([str(model), "--all-versions", "nobody", "--port", "0"], tmp_path / "home"),
                      "--all-versions nobody", "no registered model")
