"""Images through the endpoint, over real HTTP on 127.0.0.1: a tiny LLaVA trained on shapes ("a red circle") answers
chats whose user turns carry image_url parts, batched; every unusable image is a 4xx JSON error; remote image URLs
are fetched only from allowed hosts; the request log keeps the images' statistics; and the monitor stage probes a
vision-language version with the test split's images and image canaries."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from flows.cli import app
from ftcore import tracking, versions
from ftcore.data.clean import clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.jobs import clean_job
from ftcore.models.init import InitJob, init_stage
from ftcore.monitor.canaries import question_template
from ftcore.monitor.config import MonitorConfig
from ftcore.monitor.stage import MonitorJob, monitor_stage
from ftcore.outputs import DatasetOutput, DeployOutput
from ftcore.recipe import Recipe
from ftcore.serving.request_log import RequestLog, RequestRecord
from ftcore.serving.server import serving
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.ftcore.image_fixtures import draw, write_shapes
from tests.ftcore.serving_fixtures import api_error, metric, serve_cfg
from tests.ftcore.test_image_text import shapes_recipe
from tests.loopback import QuietHandler, serve

QUESTION = "What is this?"
PICTURES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle"), ("red", "square"),
            ("blue", "triangle")]
# Small limits, so that each can be passed with a small picture.
IMAGE_LIMITS = {"max_images": 3, "max_image_bytes": 20_000, "max_pixels": 128 * 128}


def png(image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def image_chat(*urls: str, text: str = QUESTION, max_tokens: int = 24) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}],
            "max_tokens": max_tokens, "temperature": 0}


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"].strip()


def right_answers(answers: list[str]) -> int:
    """How many of the answers to PICTURES, in order, name the picture's colour and shape."""
    return sum(said == f"a {colour} {shape}" for said, (colour, shape) in zip(answers, PICTURES, strict=True))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[DatasetOutput, Path, Recipe]:
    """The shapes dataset, a LLaVA trained on it from scratch (about 15 s, once for the module) and the recipe."""
    root = tmp_path_factory.mktemp("shapes")
    recipe = shapes_recipe(write_shapes(root / "data"), "llava")
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), root / "collected")
    dataset = clean_balance_stage(clean_job(recipe, collected), root / "clean")
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec,
                              vision=recipe.train.vision), root / "init")
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                          root / "train")
    return dataset, trained.model_path, recipe


@pytest.fixture(scope="module")
def vision(shapes, tmp_path_factory) -> Iterator[tuple[httpx.Client, Path]]:
    """The shapes model served with IMAGE_LIMITS, batching requests that arrive within 200 ms: a client and the
    request log's database."""
    log = tmp_path_factory.mktemp("vision-log")
    cfg = serve_cfg(log, "vision", images=IMAGE_LIMITS, batching={"max_wait_ms": 200})
    with serving(str(shapes[1]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, log / "vision.db"


def test_image_questions_are_answered_about_the_picture(vision):
    client, _ = vision
    health = client.get("/health").json()
    assert health["images"] is True and health["prompting"] == "messages"
    answers = [answer(client.post("/v1/chat/completions", json=image_chat(data_url(png(draw(*picture))))))
               for picture in PICTURES]
    assert right_answers(answers) >= 5, answers  # the same question each time: only the picture tells them apart


def test_image_tokens_count_in_the_usage_and_the_limits(vision):
    client, _ = vision
    text_only = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}],
                                                           "max_tokens": 4})
    one_image = client.post("/v1/chat/completions", json=image_chat(data_url(png(draw("red", "circle"))),
                                                                     max_tokens=4))
    assert one_image.json()["usage"]["prompt_tokens"] > text_only.json()["usage"]["prompt_tokens"] + 10
    # serve_cfg's max_prompt_tokens is 64: the question fits with one picture, not with three.
    three = data_url(png(draw("red", "circle")))
    error = api_error(client.post("/v1/chat/completions", json=image_chat(three, three, three)), 400)
    assert error["code"] == "prompt_too_long" and "limits.max_prompt_tokens" in error["message"]


def test_concurrent_image_requests_share_batches_with_text_ones_beside_them(vision):
    client, _ = vision
    batches, requests = metric(client, "ftflow_batch_size_count"), metric(client, "ftflow_batch_size_sum")
    # Shifted a pixel from the pictures asked before: no answer comes from the response cache.
    bodies = [image_chat(data_url(png(draw(colour, shape, offset=1)))) for colour, shape in PICTURES]
    bodies += [{"messages": [{"role": "user", "content": f"{QUESTION} {i}"}], "max_tokens": 4} for i in range(2)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post("/v1/chat/completions", json=body), bodies))
    answers = [answer(r) for r in responses]
    assert right_answers(answers[:len(PICTURES)]) >= 5, answers
    assert metric(client, "ftflow_batch_size_sum") - requests == len(bodies)
    assert metric(client, "ftflow_batch_size_count") - batches < len(bodies)  # some were generated together


def test_text_requests_to_a_vision_model_are_answered(vision):
    client, _ = vision
    chat = client.post("/v1/chat/completions", json={"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": QUESTION}], "max_tokens": 4})
    assert isinstance(answer(chat), str)
    completion = client.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 4})
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] > 0


def _noise(side: int) -> bytes:
    import numpy as np
    from PIL import Image

    return png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)))


RED = data_url(png(draw("red", "circle")))
PART = "messages.0.content.0.image_url.url"
BAD_IMAGES = {
    "invalid base64": (image_chat("data:image/png;base64,@@@not base64@@@"), 400, "invalid_base64", PART),
    "not an image": (image_chat(data_url(b"these bytes are no picture")), 400, "invalid_image", PART),
    "a truncated image": (image_chat(data_url(png(draw("red", "circle"))[:60])), 400, "invalid_image", PART),
    "over the byte limit": (image_chat(data_url(_noise(100))), 413, "image_too_large", PART),
    "over the pixel limit": (image_chat(data_url(png(draw("red", "circle", size=200)))), 413, "image_too_large",
                             PART),
    "too many images": (image_chat(RED, RED, RED, RED), 400, "too_many_images", "messages"),
    "a data: URL of text": (image_chat("data:text/plain;base64,aGVsbG8="), 400, "invalid_image_url", PART),
    "a data: URL not in base64": (image_chat("data:image/png,%89PNG"), 400, "invalid_image_url", PART),
    "a file: URL": (image_chat("file:///etc/passwd"), 400, "invalid_image_url", PART),
    "the image token in the text": (image_chat(RED, text="What is <image>?"), 400, "invalid_images", "messages"),
    "an unknown part type": ({"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, 400,
                             "invalid_field", None),
}


@pytest.mark.parametrize("case", BAD_IMAGES, ids=list(BAD_IMAGES))
def test_an_unusable_image_is_a_4xx_json_error(vision, case):
    client, _ = vision
    body, status, code, param = BAD_IMAGES[case]
    error = api_error(client.post("/v1/chat/completions", json=body), status)
    assert error["code"] == code and (param is None or error["param"] == param), error


def test_an_image_sent_to_a_text_model_is_refused(folders):
    cfg = serve_cfg(folders["root"], "text-images")
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["images"] is False
        error = api_error(client.post("/v1/chat/completions", json=image_chat(RED)), 400)
        assert error["code"] == "images_not_supported" and error["param"] == PART
        # Text parts alone are text: a text model answers them as it answers a string.
        parts = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Define "}, {"type": "text", "text": "asthma."}]}], "max_tokens": 3,
            "temperature": 0}).json()
        plain = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Define asthma."}],
                                                          "max_tokens": 3, "temperature": 0}).json()
        assert parts["choices"] == plain["choices"] and parts["usage"] == plain["usage"]


class PictureHost(QuietHandler):
    """A remote image host: /red.png, a redirect to it, and a 404 for anything else."""

    def do_GET(self):
        if self.path == "/red.png":
            data = png(draw("red", "circle"))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "/red.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)


def test_remote_image_urls_are_fetched_only_from_allowed_hosts(vision, shapes, tmp_path):
    client, _ = vision
    with serve(PictureHost) as host:
        error = api_error(client.post("/v1/chat/completions", json=image_chat(f"{host}/red.png")), 400)
        assert error["code"] == "image_url_not_allowed" and error["param"] == PART
        assert "data:image/png;base64" in error["message"] and "--image-url-host 127.0.0.1" in error["message"]

        cfg = serve_cfg(tmp_path, "allowed", images={"url_hosts": ["127.0.0.1"]})
        with serving(str(shapes[1]), cfg) as url, httpx.Client(base_url=url, timeout=60) as allowed:
            said = answer(allowed.post("/v1/chat/completions", json=image_chat(f"{host}/red.png")))
            assert said == "a red circle"
            for path, expected in [("/moved.png", "redirect"), ("/gone.png", "HTTP 404")]:
                error = api_error(allowed.post("/v1/chat/completions", json=image_chat(f"{host}{path}")), 400)
                assert error["code"] == "image_fetch_failed" and expected in error["message"]
            # localhost is another name: the allow-list holds host names as written
            refused = allowed.post("/v1/chat/completions", json=image_chat(f"{host.replace('127.0.0.1', 'localhost')}"
                                                                          "/red.png"))
            assert api_error(refused, 400)["code"] == "image_url_not_allowed"


def test_the_serve_command_refuses_an_allowed_host_that_is_a_url(shapes):
    result = CliRunner().invoke(app, ["serve", str(shapes[1]), "--image-url-host", "http://images.example.org"])
    assert result.exit_code != 0
    assert "images.url_hosts" in result.output and "give the host alone" in result.output


def test_the_request_log_keeps_image_statistics_and_no_server_errors(vision):
    client, database = vision
    asked = "Which shape?"
    client.post("/v1/chat/completions", json=image_chat(data_url(png(draw("blue", "circle"))), text=asked,
                                                         max_tokens=2))
    log = RequestLog(f"sqlite:///{database}")
    try:
        rows = _read_until(log, lambda frame: (frame["input"] == f"\ufffc{asked}").any())
    finally:
        log.close()
    # Every refusal of this module's endpoint so far was the client's: no request failed with a 5xx.
    assert (rows["status"] < 500).all(), rows[rows["status"] >= 500][["status", "error"]]
    [stats] = json.loads(rows[rows["input"] == f"\ufffc{asked}"]["images"].iloc[0])
    assert (stats["width"], stats["height"]) == (48, 48) and 100 < stats["brightness"] < 255  # blue on white


def _read_until(log: RequestLog, seen, tries: int = 200):
    """The log once `seen(rows)` holds: the server writes it on a background thread."""
    import time

    for _ in range(tries):
        rows = log.read()
        if seen(rows):
            return rows
        time.sleep(0.05)
    raise AssertionError("the request log never showed the request")


def test_a_request_log_from_before_images_gains_the_column(tmp_path):
    database = tmp_path / "old.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE ftflow_requests (id INTEGER PRIMARY KEY, ts FLOAT NOT NULL, model VARCHAR(256) "
                     "NOT NULL, version VARCHAR(64) NOT NULL, endpoint VARCHAR(64) NOT NULL, status INTEGER NOT NULL, "
                     "latency_s FLOAT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, cached "
                     "BOOLEAN NOT NULL, error TEXT, input TEXT, output TEXT)")
        conn.execute("INSERT INTO ftflow_requests VALUES (1, 1.0, 'm', '1', 'completions', 200, 0.1, 1, 1, 0, NULL, "
                     "'old', 'row')")
    log = RequestLog(f"sqlite:///{database}")
    try:
        log.append([RequestRecord(ts=2.0, model="m", version="1", endpoint="chat.completions", status=200,
                                  latency_s=0.1, images='[{"width": 1.0, "height": 1.0, "brightness": 0.0}]')])
        rows = log.read()
    finally:
        log.close()
    assert rows["input"].iloc[0] == "old" and rows["images"].isna().tolist() == [True, False]


def test_the_monitor_stage_probes_a_vision_language_version_with_images(shapes, tmp_path):
    dataset, model, recipe = shapes
    (tmp_path / "pictures").mkdir()
    asked = [("red", "circle"), ("blue", "square"), ("green", "triangle")]
    for colour, shape in asked:
        draw(colour, shape).save(tmp_path / "pictures" / f"{colour}-{shape}.png")
    canaries = tmp_path / "canaries.jsonl"
    canaries.write_text("".join(json.dumps({"question": QUESTION, "answer": f"a {colour} {shape}",
                                            "image": f"pictures/{colour}-{shape}.png"}) + "\n"
                                for colour, shape in asked))
    run_id = tracking.start_pipeline_run("shapes", "run", {"name": "shapes"}, {})
    version = versions.register_version(run_id, "shapes", model, {})
    deployed = DeployOutput(path=tmp_path / "deploy", content_hash="d", registered_model="shapes", version=version,
                            aliases=[], uri=f"models:/shapes/{version}", gate_passed=True, gate_reason="")
    cfg = MonitorConfig(probe_size=20, max_new_tokens=24, canaries=canaries)
    assert question_template(recipe.data) is None  # asked as chats, like the model was trained
    job = MonitorJob(deployed=deployed, dataset=dataset, monitor=cfg, toxicity=None,
                     prompt_template=question_template(recipe.data))
    out = monitor_stage(job, tmp_path / "monitor")
    m = out.metrics
    assert m["requests"] == 20 + 3 and m["error_rate"] == 0 and m["client_error_rate"] == 0
    assert m["images_compared"] == 23 and m["canary_accuracy"] >= 2 / 3
    # Every picture is 48 x 48, live and in training; their brightness differs with the shape drawn.
    assert m["drift.image_width"] == 0 and m["drift.image_height"] == 0 and 0 <= m["drift.image_brightness"] < 1
    logged = [json.loads(line) for line in out.artifacts["canaries"].read_text().splitlines()]
    assert [c["image"] for c in logged] == [f"{colour}-{shape}.png" for colour, shape in asked]
    assert "image mean brightness" in out.artifacts["report"].read_text()
