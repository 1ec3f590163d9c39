"""infra/: the docker-compose file against the Compose specification, the Kubernetes manifests against the
Kubernetes API schemas, and the rules the set-up promises (no secret in a file, loopback ports, healthchecks where
others wait). Offline: the Compose schema is the one check-jsonschema vendors, kubernetes-validate ships its own."""

from __future__ import annotations

import importlib.resources
import itertools
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ftcore.serving.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
K8S_DIR = INFRA / "k8s"
K8S_VERSION = "1.37.0"

# Names of settings that hold a credential.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY|AUTH_STRING|CREDENTIAL", re.IGNORECASE)
# Compose interpolation: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error},
# ${NAME:+alt}, ${NAME+alt}, $NAME. Anything else after a $ is a mistake compose would reject or misread.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}$")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, strict about syntax (enough for this file: no nested defaults)."""
    out, pos = [], 0
    for m in INTERPOLATION.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        if m["escaped"]:
            out.append("$")
            continue
        name = m["name"] or m["bare"]
        value, op, arg = env.get(name), m["op"] or "", m["arg"] or ""
        set_ = value is not None and (value != "" or not op.startswith(":"))
        if op.endswith("-"):
            out.append(value if set_ else arg)
        elif op.endswith("?"):
            if not set_:
                raise MissingVariable(f"{name}: {arg}")
            out.append(value)
        elif op.endswith("+"):
            out.append(arg if set_ else "")
        else:
            out.append(value or "")
    out.append(text[pos:])
    result = "".join(out)
    stray = re.sub(r"\$\$|\$\{[^}]*\}|\$[A-Za-z_]", "", text)
    assert "$" not in stray, f"malformed interpolation in {text!r}"
    return result


def interpolate_tree(node, env: dict[str, str]):
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def strings(node):
    """Every string in a YAML tree."""
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def env_example() -> dict[str, str]:
    """The uncommented NAME=value lines of infra/.env.example."""
    lines = (INFRA / ".env.example").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S_DIR.rglob("*.yaml")):  # gpu/ too: applied apart, checked alike
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


# ---------------------------------------------------------------- docker compose

def test_compose_file_follows_the_compose_specification(compose, compose_schema):
    validator = jsonschema.Draft202012Validator(compose_schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # And as compose sees it once the variables are filled in from a completed .env.
    filled = {name: "x" for name in env_example()}
    resolved = interpolate_tree(compose, filled)
    assert not list(validator.iter_errors(resolved))


def test_required_variables_are_exactly_the_ones_env_example_lists(compose):
    required = {m["name"] for s in strings(compose) for m in INTERPOLATION.finditer(s)
                if m["op"] and m["op"].endswith("?")}
    example = env_example()
    assert required == set(example), "infra/.env.example lists the variables compose refuses to start without"
    assert all(value == "" for value in example.values()), ".env.example holds names only, never values"
    # Without them compose stops and says which one is missing.
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate_tree(compose, {})


def test_compose_holds_no_secret(compose):
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping, so its names can be checked"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert REFERENCE.match(str(value)), f"{name}.{key} must be a ${{VAR}} reference, not a value"
        # Credentials inside URLs (user:password@host) and commands: the password part is a reference.
        for s in strings(service):
            for password in re.findall(r"://[^/\s:@]+:([^@\s]+)@", s):
                assert REFERENCE.match(password), f"{name}: a password in a URL must come from a variable: {s}"
    # No .env file is tracked next to the compose file.
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_compose_ports_are_published_on_loopback_by_default(compose):
    published = [(name, p) for name, s in compose["services"].items() for p in s.get("ports", [])]
    assert published
    for name, port in published:
        # Only the documented override (FTFLOW_BIND_ADDRESS, infra/README.md) may change the address.
        assert isinstance(port, str) and port.startswith("${FTFLOW_BIND_ADDRESS:-127.0.0.1}:"), (name, port)
        assert interpolate(port, {}).startswith("127.0.0.1:"), (name, port)
    assert "FTFLOW_BIND_ADDRESS" in (INFRA / "README.md").read_text(encoding="utf-8")


def test_services_others_wait_for_have_healthchecks(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if services[dep].get("restart") == "no":  # a one-shot job: waited for until it succeeds
                assert spec["condition"] == "service_completed_successfully", (name, dep)
            else:
                assert spec["condition"] == "service_healthy", (name, dep)
                assert "healthcheck" in services[dep], f"{dep} is waited for by {name} but has no healthcheck"
    long_running = [n for n, s in services.items() if s.get("restart") != "no"]
    assert all("healthcheck" in services[n] for n in long_running)


def test_compose_volumes_and_mounts_exist(compose):
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"


def test_compose_runs_the_documented_commands(compose):
    services = compose["services"]
    assert services["prefect-worker"]["command"][:6] == ["prefect", "worker", "start", "--pool", "ftflow-process",
                                                         "--type"]
    serve = services["serve"]["command"]
    assert serve[:3] == ["ftflow", "serve", "models:/${FTFLOW_MODEL:-clinical-qa}@champion"]
    assert interpolate(serve[2], {}) == "models:/clinical-qa@champion"
    assert services["serve"]["environment"]["FTFLOW_SERVE_TOKEN"].startswith("${FTFLOW_SERVE_TOKEN:?")


def test_dockerfile_builds_a_cpu_non_root_image():
    text = (INFRA / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.11-slim AS ftflow" in text
    torch_pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"] if d.startswith("torch=="))
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cpu \"" + re.escape(torch_pin) + '"', text)
    # Every stage ends as a non-root user.
    for stage in re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]:
        users = re.findall(r"^USER (\S+)", stage, flags=re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), stage.splitlines()[0]
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", ".ftflow", ".env"} <= set(ignored)


# ---------------------------------------------------------------- Kubernetes

def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def test_manifests_follow_the_kubernetes_schemas(manifests):
    assert manifests
    for doc in manifests:
        # strict: unknown fields (a typo such as `readinessProbes`) fail too. Raises with the path on failure.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifests_hold_no_secret(manifests):
    assert not [d for d in manifests if d["kind"] == "Secret"], "the operator creates the Secret (infra/README.md)"
    required_keys = set()
    for doc in manifests:
        for c in containers(doc):
            for var in c.get("env", []):
                if SECRET_NAME.search(var["name"]):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    assert ref and "value" not in var, f"{doc['metadata']['name']}: {var['name']} needs secretKeyRef"
                    assert ref["name"] == "ftflow-secrets"
                    if not ref.get("optional"):
                        required_keys.add(ref["key"])
        if doc["kind"] == "ConfigMap":
            for key in doc["data"]:
                assert not SECRET_NAME.search(key), f"{key} belongs in the Secret"
    # The README's `kubectl create secret` names every key the pods cannot start without.
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    assert "kubectl -n ftflow create secret generic ftflow-secrets" in readme
    assert required_keys and all(f"--from-literal={key}=" in readme for key in required_keys)


def test_every_object_is_namespaced_and_referenced_objects_exist(manifests):
    by_kind: dict[str, set[str]] = {}
    for doc in manifests:
        by_kind.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "ftflow", doc["metadata"]["name"]
    for doc in manifests:
        for c in containers(doc):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] in by_kind["ConfigMap"]
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in by_kind["ConfigMap"]
        if pod.get("serviceAccountName"):
            assert pod["serviceAccountName"] in by_kind["ServiceAccount"]
        if doc["kind"] == "RoleBinding":
            assert doc["roleRef"]["name"] in by_kind["Role"]
            assert all(s["name"] in by_kind["ServiceAccount"] for s in doc["subjects"])
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]


def test_serving_deployment(manifests):
    deployment = next(d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == "ftflow-serve")
    service = next(d for d in manifests if d["kind"] == "Service" and d["metadata"]["name"] == "ftflow-serve")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    (serve,) = pod["spec"]["containers"]
    assert serve["command"] == ["ftflow", "serve"] and serve["args"][0] == "models:/$(FTFLOW_MODEL)@champion"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert serve[probe]["httpGet"]["path"] == "/health"
    assert serve["resources"]["requests"] and serve["resources"]["limits"]["memory"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # The mounted serving config is one ftflow serve accepts.
    config = next(d for d in manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ftflow-serve-config")
    ServeConfig.model_validate(yaml.safe_load(config["data"]["serve.yaml"]))
    assert "--config=/etc/ftflow/serve.yaml" in serve["args"]


def test_prefect_worker_may_run_jobs_and_nothing_more(manifests):
    worker = next(d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == "prefect-worker")
    (container,) = containers(worker)
    assert container["command"] + container["args"][:2] == ["prefect", "worker", "start", "--pool=ftflow-k8s",
                                                            "--type=kubernetes"]
    assert container["resources"]["requests"]
    role = next(d for d in manifests if d["kind"] == "Role" and d["metadata"]["name"] == "prefect-worker")
    jobs = next(r for r in role["rules"] if "jobs" in r["resources"])
    assert jobs["apiGroups"] == ["batch"] and "create" in jobs["verbs"]
    assert not [d for d in manifests if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def _export(args: list[str]) -> dict:
    """The options of an `ftflow export` command line, parsed by ftflow's own CLI (checked, the command not run)."""
    import typer

    from flows.cli import app

    command = typer.main.get_command(app).commands["export"]
    return command.make_context("export", list(args)).params


def _export_folder(args: list[str]) -> str:
    """The folder a merged_bf16 `ftflow export ... --to` command line writes."""
    params = _export(args)
    assert params["kind"] == ["merged_bf16"], params
    return str(params["to"])


def test_vllm_serves_the_folder_the_export_writes_on_a_gpu(manifests, compose):
    deployment = next(d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == "ftflow-vllm")
    pod = deployment["spec"]["template"]["spec"]
    (export,), (vllm,) = pod["initContainers"], pod["containers"]
    assert export["command"] == ["ftflow", "export"]
    assert vllm["args"][0] == _export_folder(export["args"]) == "/models/champion"
    assert {m["name"] for m in export["volumeMounts"]} == {m["name"] for m in vllm["volumeMounts"]} - {"shm"}
    assert "--served-model-name=$(FTFLOW_MODEL)" in vllm["args"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert next(v for v in vllm["env"] if v["name"] == "VLLM_API_KEY")["valueFrom"]["secretKeyRef"]["key"] == \
        "serve-token"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert vllm[probe]["httpGet"]["path"] == "/health"

    services = compose["services"]
    model, server = services["vllm-model"], services["vllm"]
    assert model["profiles"] == server["profiles"] == ["vllm"]  # not started by a plain `docker compose up`
    assert server["command"][0] == _export_folder(model["command"][2:]) == "/models/champion"
    assert server["depends_on"] == {"vllm-model": {"condition": "service_completed_successfully"}}
    assert server["image"].split(":")[1] == vllm["image"].split(":")[1]  # one vLLM version in both
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def _option(args: list[str], name: str) -> str:
    """An option's value, given as `--name=value` or `--name value`."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def _lora_modules(args: list[str]) -> dict[str, str]:
    """vLLM's `--lora-modules NAME=DIR ...`: the values up to the next option."""
    values = itertools.takewhile(lambda a: not a.startswith("--"), args[args.index("--lora-modules") + 1:])
    return dict(value.split("=", 1) for value in values)


def _check_lora_layout(exports: list[dict], server: list[str]) -> None:
    """vLLM serves the base export the init steps write and each adapter export written for that base (under the
    name its folder has), with room for every adapter and its rank."""
    (base,) = [e for e in exports if e["kind"] == ["base"]]
    adapters = [e for e in exports if e["kind"] == ["adapter"]]
    assert server[0] == str(base["to"]) and "--enable-lora" in server
    assert all(str(e["base"]) == str(base["to"]) for e in adapters)
    assert adapters[0]["model_uri"] == base["model_uri"]  # the base is the first adapter's
    served = _lora_modules(server)
    assert sorted(served.values()) == sorted(str(e["to"]) for e in adapters) and len(served) >= 2
    assert all(folder.rsplit("/", 1)[1] == name for name, folder in served.items())
    assert int(_option(server, "--max-loras")) >= len(served)
    recipes = [yaml.safe_load(p.read_text()) for p in (ROOT / "data_recipes" / "recipes").glob("*.yaml")]
    ranks = [r["method"]["r"] for r in recipes if "r" in r.get("method", {})]
    ranks += [rank for r in recipes for rank in r.get("tune", {}).get("space", {}).get("method.r", {}).get(
        "choice", [])]  # and those `ftflow tune` tries
    assert ranks
    # vLLM's --max-lora-rank choices (vllm/config/lora.py); at least the demo recipes' ranks
    assert int(_option(server, "--max-lora-rank")) in (8, 16, 32, 64, 128, 256, 320, 512)
    assert int(_option(server, "--max-lora-rank")) >= max(ranks)


def test_vllm_serves_registered_adapters_on_the_base_they_were_trained_on(manifests, compose):
    settings = next(d for d in manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ftflow-settings")
    expand = lambda args: [re.sub(r"\$\((\w+)\)", lambda m: settings["data"][m[1]], a) for a in args]  # noqa: E731
    deployment = next(d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == "ftflow-vllm-lora")
    pod = deployment["spec"]["template"]["spec"]
    assert all(c["command"] == ["ftflow", "export"] for c in pod["initContainers"])
    (vllm,) = pod["containers"]
    _check_lora_layout([_export(expand(c["args"])) for c in pod["initContainers"]], expand(vllm["args"]))
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert next(v for v in vllm["env"] if v["name"] == "VLLM_API_KEY")["valueFrom"]["secretKeyRef"]["key"] == \
        "serve-token"

    services = interpolate_tree({k: v for k, v in compose["services"].items() if k.startswith("vllm-lora")},
                                {name: "set" for name in env_example()})
    models, server = services["vllm-lora-models"], services["vllm-lora"]
    assert models["profiles"] == server["profiles"] == ["vllm-lora"]
    assert models["command"][:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in models["command"][2].split("&&")]
    assert all(step[:2] == ["ftflow", "export"] for step in steps)
    _check_lora_layout([_export(step[2:]) for step in steps], server["command"])
    assert server["depends_on"] == {"vllm-lora-models": {"condition": "service_completed_successfully"}}
    assert server["image"] == vllm["image"] == compose["services"]["vllm"]["image"]
