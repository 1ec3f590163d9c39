"""Chatting with a served model as it was trained (issue 21): the chat route writes a chat the way the model's
training prompts were (its recorded prompting), refuses what it cannot write faithfully, lets a request's `model`
pick another version, and the playground page at / and `ftflow chat` use it. The demo is trained once for the
module at its own size: that model answers the demo's questions (a tiny one does not)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from flows.cli import app
from ftcore import tracking, versions
from ftcore.data.split import data_prompting
from ftcore.models.prompting import RECORD, Prompting
from ftcore.serving.chat import Conversation
from ftcore.serving.engine import load_engine
from ftcore.serving.server import serving
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.browser import screenshot
from tests.ftcore.pipeline_fixtures import prepare
from tests.ftcore.serving_fixtures import api_error, serve_cfg

QUESTION = "What does COPD stand for?"
EXPANSION = "chronic obstructive pulmonary disease"


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    """The demo recipe's model, trained as `ftflow run` trains it (its prompting recorded beside the weights)."""
    root = tmp_path_factory.mktemp("demo-trained")
    prepared = prepare(root, tiny=False)
    job = TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train,
                   prompting=data_prompting(prepared.recipe.data))
    return train_stage(job, root / "train").model_path


@pytest.fixture(scope="module")
def demo_endpoint(demo_model, tmp_path_factory):
    cfg = serve_cfg(tmp_path_factory.mktemp("demo-serving"), "demo")
    with serving(str(demo_model), cfg) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def _chat(client: httpx.Client, messages: list[dict], **fields) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": messages, "temperature": 0, "max_tokens": 16,
                                                     **fields})


def test_the_trained_model_records_its_prompt_template(demo_model):
    recorded = Prompting.model_validate_json((demo_model / RECORD).read_text())
    assert recorded == Prompting(format="prompt_completion", prompt_template="Question: {prompt}\nAnswer:",
                                 completion_template=" {completion}")


def test_the_chat_route_returns_the_trained_answer(demo_endpoint):
    response = _chat(demo_endpoint, [{"role": "user", "content": QUESTION}])
    assert response.status_code == 200, response.text
    assert EXPANSION in response.json()["choices"][0]["message"]["content"]
    # Asked the way it was trained: the same answer as the completion in the training template.
    completion = demo_endpoint.post("/v1/completions", json={"prompt": f"Question: {QUESTION}\nAnswer:",
                                                             "temperature": 0, "max_tokens": 16})
    assert completion.json()["choices"][0]["text"] == response.json()["choices"][0]["message"]["content"]
    assert demo_endpoint.get("/health").json()["prompting"] == "prompt_completion"


def test_a_prompt_trained_model_refuses_a_chat_it_cannot_write(demo_endpoint):
    turns = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": EXPANSION},
             {"role": "user", "content": "And MI?"}]
    for messages in (turns, [{"role": "system", "content": "Be brief."}, turns[0]]):
        error = api_error(_chat(demo_endpoint, messages), 400)
        assert (error["param"], error["code"]) == ("messages", "chat_not_trained")
        assert "POST /v1/completions" in error["message"] and "'Question: {prompt}\\nAnswer:'" in error["message"]


def test_a_chat_trained_model_keeps_taking_chats(causal):
    client, _ = causal
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Define asthma."}]
    assert _chat(client, turns, max_tokens=3).status_code == 200


def test_a_folder_never_trained_on_chats_is_refused_them(folders, tmp_path):
    """No record and only ftflow's default chat template: its chats would be noise, so the route says what to do."""
    with serving(str(_without_record(folders["causal"], tmp_path / "bare")), serve_cfg(tmp_path, "bare")) as url:
        error = api_error(httpx.post(f"{url}/v1/chat/completions",
                                     json={"messages": [{"role": "user", "content": "Hi"}]}, timeout=60), 400)
    assert error["code"] == "chat_not_trained" and "POST /v1/completions" in error["message"]


def test_a_request_picks_another_registered_version(demo_model, tmp_path):
    client_versions = _register_twice(demo_model)
    cfg = serve_cfg(tmp_path, "versions", reload_interval_s=0)
    with serving("models:/clinical-qa@champion", cfg) as url, httpx.Client(base_url=url, timeout=120) as client:
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert {i: (m["aliases"], m["serving"]) for i, m in listed.items()} == {
            "clinical-qa/2": (["challenger"], False), "clinical-qa/1": (["champion"], True)}
        answer = _chat(client, [{"role": "user", "content": QUESTION}], model="clinical-qa@challenger").json()
        assert answer["model_version"] == "2" and EXPANSION in answer["choices"][0]["message"]["content"]
        assert _chat(client, [{"role": "user", "content": QUESTION}]).json()["model_version"] == "1"
        missing = api_error(_chat(client, [{"role": "user", "content": QUESTION}], model="clinical-qa/9"), 404)
        assert missing["code"] == "model_not_found"
        other = api_error(_chat(client, [{"role": "user", "content": QUESTION}], model="gpt-4"), 404)
        assert other["param"] == "model" and "NAME@ALIAS" in other["message"]
    assert client_versions == ["1", "2"]


def test_the_playground_page_chats_and_compares_in_a_browser(demo_model, tmp_path, browser_page):
    _register_twice(demo_model)
    cfg = serve_cfg(tmp_path, "page", reload_interval_s=0)
    with serving("models:/clinical-qa@champion", cfg) as url:
        page = browser_page
        page.goto(url + "/")
        page.get_by_text("serving clinical-qa v1").wait_for()
        page.fill("#prompt", QUESTION)
        page.click("#send")
        answer = page.locator(".pane .assistant").first
        answer.wait_for(timeout=60_000)
        assert EXPANSION in answer.inner_text()
        assert "clinical-qa v1" in answer.inner_text() and "tokens" in answer.inner_text()
        assert " ms" in answer.inner_text()

        page.check("#compare")
        page.click("#clear")
        page.fill("#prompt", QUESTION)
        page.click("#send")
        answers = page.locator(".pane .assistant")
        answers.nth(1).wait_for(timeout=60_000)
        left, right = answers.nth(0).inner_text(), answers.nth(1).inner_text()
        assert "clinical-qa v1" in left and "clinical-qa v2" in right
        assert EXPANSION in left and EXPANSION in right
        assert screenshot(page, "chat-page.png").stat().st_size > 10_000


def test_the_page_says_when_a_token_is_needed(folders, tmp_path, browser_page):
    with serving(str(folders["causal"]), serve_cfg(tmp_path, "token"), token="s3cret") as url:
        browser_page.goto(url + "/")
        browser_page.get_by_text("This server needs a bearer token").wait_for()


def test_ftflow_chat_answers_in_the_terminal(demo_model):
    result = CliRunner().invoke(app, ["chat", str(demo_model), "--max-tokens", "16"],
                                input=f"{QUESTION}\nWhat does MI stand for?\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "each message is asked on its own" in result.output
    assert f"model> {EXPANSION}" in result.output and "model> myocardial infarction" in result.output


def test_ftflow_chat_refuses_a_model_that_never_chatted(folders, tmp_path):
    result = CliRunner().invoke(app, ["chat", str(_without_record(folders["causal"], tmp_path / "bare"))],
                                input="Hi\n")
    assert result.exit_code == 2 and "POST /v1/completions" in result.output


def test_a_chat_trained_conversation_keeps_its_history(folders):
    conversation = Conversation(load_engine(folders["causal"], "base", "1"), max_tokens=2)
    conversation.ask("What is asthma?")
    conversation.ask("And COPD?")
    assert [m["role"] for m in conversation.messages] == ["user", "assistant", "user", "assistant"]
    assert conversation.messages[0]["content"] == "What is asthma?"


def _register_twice(model: Path) -> list[str]:
    """The model registered as clinical-qa v1 (champion) and v2 (challenger) in this test's FTFLOW_HOME."""
    run_id = tracking.start_pipeline_run("playground", "run", {"name": "playground"}, {})
    registered = [versions.register_version(run_id, "clinical-qa", model, tags={}) for _ in range(2)]
    versions.set_alias("clinical-qa", "champion", registered[0])
    versions.set_alias("clinical-qa", "challenger", registered[1])
    return registered


def _without_record(folder: Path, dst: Path) -> Path:
    """`folder`'s files (linked) without its prompting record: a model ftflow did not train."""
    dst.mkdir()
    for f in folder.iterdir():
        if f.name != RECORD:
            (dst / f.name).symlink_to(f)
    return dst
