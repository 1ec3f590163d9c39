"""Many LoRA adapters on one base, over real HTTP on 127.0.0.1: each registered version answers as it does served
alone, rows of different adapters share decode steps, /v1/models lists them, unknown ones are a 404 naming them,
the admin routes load and unload at run time behind their token, an alias move loads the new version, an LRU bound
evicts and reloads, and an adapter of another base is refused."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ftcore import versions
from ftcore.errors import UserError
from ftcore.serving.decoding import DecodeBatch
from ftcore.serving.server import serving
from tests.ftcore.serving_fixtures import (
    api_error,
    lora_version_folder,
    metric,
    other_base_folder,
    register,
    serve_cfg,
)

ADMIN = "admin-s3cret"
ASKED = ["Define asthma.", "What is COPD?"]


@pytest.fixture
def registered(folders, tmp_path) -> dict[str, str]:
    """Two LoRA versions of the served base, registered as models `support` (champion) and `legal`, and a third
    for `support` kept aside: their version numbers."""
    base = folders["causal"]
    made = {name: register(model, lora_version_folder(base, tmp_path / name, seed))
            for name, model, seed in [("support", "support", 1), ("legal", "legal", 2), ("support2", "support", 3)]}
    versions.set_alias("support", versions.CHAMPION, made["support"])
    return made


def _answers(client: httpx.Client, model: str | None, prompts=ASKED) -> list[str]:
    def ask(prompt):
        body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        response = client.post("/v1/completions", json=body | ({"model": model} if model else {}))
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    return [ask(p) for p in prompts]


def _alone(folder: Path, root: Path) -> list[str]:
    """The answers of a version served on its own (its merged weights)."""
    with serving(str(folder), serve_cfg(root, f"alone-{folder.name}")) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        return _answers(client, None)


def test_adapters_answer_as_their_versions_alone_sharing_decode_steps(folders, registered, tmp_path, monkeypatch):
    step = DecodeBatch.step
    monkeypatch.setattr(DecodeBatch, "step", lambda self: (time.sleep(0.01), step(self))[1])  # requests overlap
    cfg = serve_cfg(folders["root"], "adapters", adapters={"serve": {"support": "models:/support@champion",
                                                                      "legal": "models:/legal/1"}})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert {"support", "legal"} <= set(models) and models["support"]["adapter_of"].startswith("base/")
        assert models["support"]["version"] == registered["support"] and models["support"]["aliases"] == ["champion"]
        asks = [(model, prompt) for model in (None, "support", "legal") for prompt in ASKED] * 2
        with ThreadPoolExecutor(len(asks)) as pool:
            got = list(pool.map(lambda ask: _answers(client, ask[0], [ask[1]])[0], asks))
        answered = client.post("/v1/completions", json={"prompt": ASKED[0], "max_tokens": 2, "model": "legal"})
        shared = metric(client, "ftflow_decode_rows_count") - metric(client, 'ftflow_decode_rows_bucket{le="2.0"}')
        assert metric(client, "ftflow_adapters_loaded") == 2
    by_model = {model: got[i * 2:i * 2 + 2] for i, model in enumerate((None, "support", "legal"))}
    assert got[6:] == got[:6]  # the same answers the second time round, whatever shared their steps
    assert by_model["support"] == _alone(tmp_path / "support", folders["root"])
    assert by_model["legal"] == _alone(tmp_path / "legal", folders["root"])
    assert by_model[None] == _alone(folders["causal"], folders["root"])
    assert len({tuple(v) for v in by_model.values()}) == 3  # each adapter changes the answers
    assert answered.json()["model"] == "legal" and answered.json()["model_version"] == registered["legal"]
    assert shared >= 1  # decode steps with 3 rows or more: the base's and the adapters' requests together


def test_an_unknown_adapter_is_a_404_naming_the_served_ones(folders, registered):
    cfg = serve_cfg(folders["root"], "unknown-adapter", adapters={"serve": {"support": "models:/support/1"}})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        error = api_error(client.post("/v1/completions", json={"prompt": "x", "model": "billing"}), 404)
    assert error["code"] == "model_not_found" and "support" in error["message"]


def test_adapters_load_and_unload_at_run_time_behind_the_admin_token(folders, registered):
    cfg = serve_cfg(folders["root"], "admin")
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        body = {"name": "ops", "uri": "models:/legal/1"}
        assert api_error(client.post("/admin/adapters", json=body), 403)["code"] == "admin_disabled"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with serving(str(folders["causal"]), cfg, admin_token=ADMIN) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        assert api_error(client.post("/admin/adapters", json=body), 401)["code"] == "invalid_token"
        base = _answers(client, None)
        loaded = client.post("/admin/adapters", json=body, headers=auth)
        assert loaded.status_code == 200 and loaded.json()["version"] == registered["legal"]
        with_ops = _answers(client, "ops")
        assert with_ops != base and _answers(client, None) == base  # the base's rows keep the base's answers
        assert [m["id"] for m in client.get("/admin/adapters", headers=auth).json()["data"]] == ["ops"]
        assert client.delete("/admin/adapters/ops", headers=auth).status_code == 200
        assert api_error(client.post("/v1/completions", json={"prompt": "x", "model": "ops"}), 404)
        assert api_error(client.delete("/admin/adapters/ops", headers=auth), 404)
        full = client.post("/admin/adapters", json={"name": "x", "uri": "models:/nope/1"}, headers=auth)
        assert api_error(full, 404)["param"] == "uri"
        assert api_error(client.post("/admin/adapters", json={"name": "a b", "uri": "models:/legal/1"},
                                     headers=auth), 400)["code"] == "invalid_adapter_name"
        assert _answers(client, None) == base
    assert with_ops == _alone_cached(folders, registered)


def _alone_cached(folders, registered) -> list[str]:
    """legal's answers served alone (its version folder fetched from the registry)."""
    from ftcore.models.registered import model_folder, pin_reference

    return _alone(model_folder(pin_reference("models:/legal/1", "test")), folders["root"])


def test_an_adapter_follows_its_alias(folders, registered, tmp_path):
    cfg = serve_cfg(folders["root"], "adapter-alias", reload_interval_s=0.2,
                    adapters={"serve": {"support": "models:/support@champion"}})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        before = _answers(client, "support")
        versions.set_alias("support", versions.CHAMPION, registered["support2"])
        deadline = time.monotonic() + 30
        while client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "model": "support"}).json()[
                "model_version"] != registered["support2"]:
            assert time.monotonic() < deadline, "the adapter did not follow its alias"
            time.sleep(0.1)
        after = _answers(client, "support")
        assert metric(client, "ftflow_adapters_loaded") == 1
    assert before != after == _alone(tmp_path / "support2", folders["root"])


def test_the_lru_bound_evicts_and_reloads(folders, registered):
    cfg = serve_cfg(folders["root"], "adapter-lru", adapters={"max_loaded": 1, "serve": {
        "support": "models:/support/1"}})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with serving(str(folders["causal"]), cfg, admin_token=ADMIN) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        support = _answers(client, "support")
        assert client.post("/admin/adapters", json={"name": "legal", "uri": "models:/legal/1"},
                           headers=auth).status_code == 200
        listed = {m["id"]: m["loaded"] for m in client.get("/v1/models").json()["data"] if m.get("adapter_of")}
        assert listed == {"support": False, "legal": True}
        legal = _answers(client, "legal")
        assert _answers(client, "support") == support != legal  # loaded again, legal evicted
        assert metric(client, "ftflow_adapters_loaded") == 1


def test_an_adapter_of_another_base_is_refused(folders, registered, tmp_path):
    other = other_base_folder(folders["causal"], tmp_path / "other-base", seed=7)
    foreign = register("foreign", lora_version_folder(other, tmp_path / "foreign", 4))
    cfg = serve_cfg(folders["root"], "foreign", adapters={"serve": {"foreign": f"models:/foreign/{foreign}"}})
    with pytest.raises(UserError, match="was not trained on the served base"), \
            serving(str(folders["causal"]), cfg):
        pass
    # A LoRA version's merged folder is no base for another adapter, though its embeddings are the base's.
    merged_base = serve_cfg(folders["root"], "merged-base", adapters={"serve": {"legal": "models:/legal/1"}})
    with pytest.raises(UserError, match="is not the base's plus the adapter"), \
            serving(str(tmp_path / "support"), merged_base):
        pass
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with serving(str(folders["causal"]), serve_cfg(folders["root"], "foreign-admin"), admin_token=ADMIN) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        refused = client.post("/admin/adapters", json={"name": "f", "uri": f"models:/foreign/{foreign}"},
                              headers=auth)
        assert api_error(refused, 400)["code"] == "adapter_base_mismatch"
        full = register("fullft", folders["causal"])
        refused = client.post("/admin/adapters", json={"name": "f", "uri": f"models:/fullft/{full}"}, headers=auth)
        assert api_error(refused, 400)["code"] == "not_an_adapter"
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_a_chat_is_written_as_the_adapter_s_version_was_trained(folders, registered, tmp_path):
    """The base learnt chats; a version trained on raw text refuses them, though it is served on that base."""
    from ftcore.models.prompting import Prompting, write_prompting

    raw = lora_version_folder(folders["causal"], tmp_path / "raw", seed=5)
    write_prompting(raw, Prompting(format="raw"))
    cfg = serve_cfg(folders["root"], "adapter-prompting", adapters={"serve": {
        "raw": f"models:/raw/{register('raw', raw)}", "legal": "models:/legal/1"}})
    chat = {"messages": [{"role": "user", "content": "What is asthma?"}], "max_tokens": 2}
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        assert client.post("/v1/chat/completions", json=chat | {"model": "legal"}).status_code == 200
        refused = api_error(client.post("/v1/chat/completions", json=chat | {"model": "raw"}), 400)
    assert refused["code"] == "chat_not_trained" and refused["message"].startswith("messages: raw v1:")


def test_every_version_of_a_registered_model_is_an_adapter_and_new_ones_join(folders, registered, tmp_path):
    full = register("support", folders["causal"])  # a full fine-tune: no adapter, passed over
    cfg = serve_cfg(folders["root"], "every-version", reload_interval_s=0.2, adapters={"every_version": ["support"]})
    auth = {"Authorization": f"Bearer {ADMIN}"}

    def adapters(client) -> set[str]:
        return {m["id"] for m in client.get("/v1/models").json()["data"] if m.get("adapter_of")}

    with serving(str(folders["causal"]), cfg, admin_token=ADMIN) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        first, second = f"support/{registered['support']}", f"support/{registered['support2']}"
        assert adapters(client) == {first, second}
        answers = {name: _answers(client, name) for name in (first, second)}
        assert answers[first] != answers[second]
        missing = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "model": f"support/{full}"})
        assert first in api_error(missing, 404)["message"]
        newest = register("support", lora_version_folder(folders["causal"], tmp_path / "support4", 5))
        deadline = time.monotonic() + 30
        while f"support/{newest}" not in adapters(client):
            assert time.monotonic() < deadline, "a version registered while serving did not join"
            time.sleep(0.1)
        assert _answers(client, f"support/{newest}") not in answers.values()
        assert client.delete(f"/admin/adapters/{first}", headers=auth).status_code == 200
        time.sleep(1)  # several registry checks: an unloaded version stays unloaded
        assert adapters(client) == {second, f"support/{newest}"}
    assert answers[second] == _alone(tmp_path / "support2", folders["root"])
    with pytest.raises(UserError, match="--all-versions nobody: no registered model"), \
            serving(str(folders["causal"]), serve_cfg(folders["root"], "none", adapters={"every_version": ["nobody"]})):
        pass
