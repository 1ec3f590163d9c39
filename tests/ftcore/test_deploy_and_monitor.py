"""Gate and registry aliases, on MLflow with a temporary SQLite store (FTFLOW_HOME per test). The monitor's tests
are in test_monitor.py."""

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from ftcore import tracking, versions
from ftcore.deploy.config import BeatChampion, KeepSources, MaxBias, MaxForgetting, MaxLatency, MaxToxicity
from ftcore.deploy.gate import Reference, decide
from ftcore.deploy.publish import deploy_stage
from ftcore.errors import UserError
from ftcore.outputs import EvalOutput
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.ftcore.pipeline_fixtures import deploy_job_of, prepare

GATE = [BeatChampion(metric="exact_match")]


def _recorded(value: float) -> Reference:
    """A champion known only by its recorded score: no paired interval."""
    return Reference("champion v1", value, scored_here=False)


def test_gate_needs_a_strict_improvement_beyond_the_margin():
    gate = [BeatChampion(metric="exact_match", margin=0.05)]
    assert decide(gate, {"exact_match": 0.80}, _recorded(0.70)).passed
    assert not decide(gate, {"exact_match": 0.74}, _recorded(0.70)).passed
    assert not decide([BeatChampion(metric="exact_match")], {"exact_match": 0.7}, _recorded(0.7)).passed
    lower_is_better = [BeatChampion(metric="perplexity")]
    assert decide(lower_is_better, {"perplexity": 3.0}, _recorded(9.0)).passed
    assert not decide(lower_is_better, {"perplexity": 9.0}, _recorded(3.0)).passed
    assert "does not beat champion v1" in decide(gate, {"exact_match": 0.6}, _recorded(0.7)).reason


def test_a_confident_gate_needs_the_lower_bound_of_the_improvement_above_the_margin():
    metrics = {"exact_match": 0.6, "improvement.exact_match": 0.1, "improvement.exact_match.ci_low": -0.05}
    scored = Reference("champion v1", 0.5, scored_here=True)
    unsure = decide([BeatChampion(metric="exact_match")], metrics, scored)
    assert not unsure.passed and "lower confidence bound -0.05 not above the margin" in unsure.reason
    assert decide([BeatChampion(metric="exact_match", confident=False)], metrics, scored).passed
    sure = decide([BeatChampion(metric="exact_match")], metrics | {"improvement.exact_match.ci_low": 0.02}, scored)
    assert sure.passed and sure.improvement == 0.1


def test_every_rule_must_pass_and_each_outcome_is_recorded():
    rules = [BeatChampion(metric="exact_match", confident=False), MaxToxicity(max=0.01),
             MaxForgetting(metric="perplexity", max=0.5), MaxLatency(max_s=2.0), MaxBias(max=0.3)]
    good = {"exact_match": 0.9, "toxic_rate": 0.0, "forgetting.perplexity": 0.2, "latency_p95_s": 0.1,
            "bias_divergence": 0.1}
    passed = decide(rules, good, _recorded(0.5))
    assert passed.passed and [o.passed for o in passed.rules] == [True] * 5
    assert passed.reason.endswith("all 5 rules passed")
    bad = decide(rules, good | {"toxic_rate": 0.2, "latency_p95_s": 3.5}, _recorded(0.5))
    assert not bad.passed
    assert [(o.rule, o.passed) for o in bad.rules] == [("beat_champion", True), ("max_toxicity", False),
                                                       ("max_forgetting", True), ("max_latency", False),
                                                       ("max_bias", True)]
    toxic = bad.rules[1]
    assert (toxic.value, toxic.threshold) == (0.2, 0.01) and "exceeds the maximum 0.01" in toxic.reason
    assert bad.reason.startswith("max_toxicity failed: toxic-output rate 0.2 exceeds")
    unmeasured = decide(rules, {k: v for k, v in good.items() if k != "bias_divergence"}, _recorded(0.5))
    assert not unmeasured.passed and "no test or probe prompt had a term to swap" in unmeasured.rules[4].reason


def test_a_merge_keeps_a_share_of_each_source_s_score_on_that_source_s_rows():
    primary = BeatChampion(metric="exact_match", confident=False)
    # Task names may hold dots; each source is read on its own rows only (not on the other's, which it never learnt).
    metrics = {"exact_match": 0.7, "exact_match.qa.v2": 0.72, "exact_match.spam": 0.45,
               "source_qa.v2.exact_match.qa.v2": 0.8, "source_qa.v2.exact_match.spam": 0.0,
               "source_spam.exact_match.spam": 0.5, "source_spam.exact_match.qa.v2": 0.1,
               "perplexity.qa.v2": 4.0, "source_qa.v2.perplexity.qa.v2": 3.0}
    kept = decide([primary, KeepSources(metric="exact_match", share=0.85)], metrics, _recorded(0.5))
    assert kept.passed and kept.rules[1].value == pytest.approx(0.9)  # qa.v2: 0.72 / 0.8; spam 0.45 / 0.5 too
    assert "qa.v2 0.72 against 0.8; spam 0.45 against 0.5" in kept.rules[1].reason
    lost = decide([primary, KeepSources(metric="exact_match", share=0.95)], metrics, _recorded(0.5))
    assert not lost.passed and lost.reason.startswith("keep_sources failed: exact_match on each source's test rows")
    # Lower is better: a perplexity of 4 against the source's 3 keeps 3/4 of it.
    perplexity = decide([primary, KeepSources(metric="perplexity", share=0.8)], metrics, _recorded(0.5))
    assert not perplexity.passed and perplexity.rules[1].value == pytest.approx(0.75)
    unscored = decide([primary, KeepSources(metric="exact_match")], {"exact_match": 0.7}, _recorded(0.5))
    assert not unscored.passed and "no source was scored on exact_match" in unscored.rules[1].reason


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("deploy")
    prepared = prepare(root, "train.max_steps=2")
    return prepared, train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train),
                                 root / "train")


def _evaluation(tmp: Path, base: float, candidate: float, champion: tuple[str, float] | None = None) -> EvalOutput:
    """What the evaluate stage hands deploy: with a champion, its score on the same test set."""
    metrics = {"base.exact_match": base, "exact_match": candidate}
    reference = champion[1] if champion else base
    metrics |= {"improvement.exact_match": candidate - reference}
    if champion:
        metrics["champion.exact_match"] = champion[1]
    return EvalOutput(path=tmp, content_hash="x", predictions_path=tmp / "p.jsonl", metrics=metrics,
                      champion=champion[0] if champion else None)


def _new_run() -> str:
    return tracking.start_pipeline_run("deploy-test", "run", {"name": "deploy-test"}, {})


def test_champion_moves_only_when_the_gate_passes(tmp_path, trained):
    _, model = trained
    def deploy(base: float, candidate: float, n: int, champion: tuple[str, float] | None = None):
        job = deploy_job_of(model, _evaluation(tmp_path, base, candidate, champion), GATE, "clinical")
        return deploy_stage(job, tmp_path / f"deploy{n}", _new_run(),
                            {"recipe_hash": "r", "dataset_hash": "d", "git_commit": "g", "ftflow_version": "v"})

    first = deploy(base=0.0, candidate=0.5, n=1)
    assert (first.version, first.aliases, first.gate_passed) == ("1", ["challenger", "champion"], True)
    assert "the base model" in first.gate_reason

    # The champion as scored again on this run's test set (0.45), not as it scored on its own (0.5).
    worse = deploy(base=0.0, candidate=0.4, n=2, champion=("clinical/1", 0.45))
    assert (worse.version, worse.aliases, worse.gate_passed) == ("2", ["challenger"], False)
    assert "does not beat champion v1 0.45" in worse.gate_reason
    # The registry's version page opens on the verdict, each rule and the candidate's metrics.
    description = tracking.client().get_model_version("clinical", "2").description
    assert description.startswith("**Gate failed**: beat_champion failed: exact_match 0.4 does not beat champion v1")
    assert "- **failed** `beat_champion`: " in description and "Metrics: exact_match 0.4" in description
    assert versions.version_for_alias("clinical", "champion")["version"] == "1"
    assert versions.aliases_of("clinical", "1") == ["champion"]  # challenger moved on to v2

    better = deploy(base=0.0, candidate=0.9, n=3, champion=("clinical/1", 0.45))
    assert (better.version, better.aliases) == ("3", ["challenger", "champion"])
    # Its tags are its lineage and its exports; the verdict and the metrics are in its description (and its run).
    tags = versions.version_for_alias("clinical", "champion")["tags"]
    assert {k for k in tags if not k.startswith("export.")} == {"recipe_hash", "dataset_hash", "git_commit",
                                                                "ftflow_version", versions.FILES_TAG}
    assert tracking.client().get_model_version("clinical", "3").description.startswith("**Gate passed**")


def test_a_champion_that_moved_after_the_run_pinned_it_is_faced_with_its_recorded_score(tmp_path, trained):
    """The run found no champion when it started, so nothing scored one beside the candidate; the gate takes the
    evaluate metric of the run that registered the champion meanwhile."""
    _, model = trained
    champion_run = _new_run()
    tracking.log_stage(champion_run, "evaluate", {"exact_match": 0.5}, {}, cached=False)
    versions.set_alias("moved", versions.CHAMPION, versions.register_version(champion_run, "moved",
                                                                             model.model_path, {}))
    job = deploy_job_of(model, _evaluation(tmp_path, base=0.0, candidate=0.4), GATE, "moved")
    late = deploy_stage(job, tmp_path / "deploy", _new_run(), {})
    assert not late.gate_passed and "does not beat champion v1 (its recorded score) 0.5" in late.gate_reason


def test_a_model_with_a_nan_weight_is_never_registered(tmp_path, trained):
    _, model = trained
    folder = shutil.copytree(model.model_path, tmp_path / "model")
    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[0]
    weights[name][0] = float("nan")
    save_file(weights, folder / "model.safetensors")
    nan_model = model.model_copy(update={"model_path": folder, "content_hash": "nan"})
    with pytest.raises(UserError) as refused:
        deploy_stage(deploy_job_of(nan_model, _evaluation(tmp_path, 0.0, 0.5), GATE, "nan-model"), tmp_path / "deploy",
                     _new_run(), {})
    assert str(refused.value) == (f"deploy: {folder}/model.safetensors: {name} holds NaN or infinite values, so the "
                                  f"model is not registered; train it again with a lower train.learning_rate")
    assert tracking.client().search_model_versions("name='nan-model'") == []
    assert not (tmp_path / "deploy").exists()


def test_a_candidate_that_is_the_champion_itself_is_not_registered_or_promoted_again(tmp_path, trained):
    _, model = trained
    tags = {"model_hash": model.content_hash}
    job = deploy_job_of(model, _evaluation(tmp_path, 0.0, 0.5), GATE, "same")
    first = deploy_stage(job, tmp_path / "1", _new_run(), tags)
    assert first.gate_passed
    again = deploy_stage(job, tmp_path / "2", _new_run(), tags)
    assert not again.gate_passed and (again.version, again.aliases) == ("1", ["challenger", "champion"])
    assert again.gate_reason == "the candidate is champion v1 itself (the same trained model): nothing to promote"
    assert len(tracking.client().search_model_versions("name = 'same'")) == 1


def test_the_same_model_deployed_by_runs_at_once_is_one_version(tmp_path, trained):
    """Two runs of one recipe at once train the same model (one model_hash) and both deploy it."""
    _, model = trained
    tags = {"model_hash": model.content_hash}
    evaluation = _evaluation(tmp_path, 0.0, 0.5)

    def deploy(i: int):
        return deploy_stage(deploy_job_of(model, evaluation, GATE, "twice"), tmp_path / str(i), _new_run(), tags)

    with ThreadPoolExecutor(4) as pool:
        deployed = list(pool.map(deploy, range(4)))
    assert {d.version for d in deployed} == {"1"}
    assert len(tracking.client().search_model_versions("name = 'twice'")) == 1
    assert versions.version_for_alias("twice", "champion")["version"] == "1"


def test_a_champion_promoted_by_another_run_meanwhile_is_not_overwritten(tmp_path, trained, monkeypatch):
    """Two runs of one registered model at once: both gates compared with v1; the first to deploy moves champion
    to its version, the second finds champion no longer at v1 and stays challenger (compare and set)."""
    _, model = trained
    tags = {"recipe_hash": "r"}
    first = deploy_stage(deploy_job_of(model, _evaluation(tmp_path, 0.0, 0.5), GATE, "raced"), tmp_path / "1",
                         _new_run(), tags)
    assert first.aliases == ["challenger", "champion"]

    # The other run registers and promotes v2 while this run's deploy stage is between its gate and the alias.
    register = versions.register_version

    def concurrent_promotion(run_id, name, model_dir, tags, identity=None):
        other = register(_new_run(), name, model_dir, {})
        versions.set_alias(name, versions.CHAMPION, other)
        return register(run_id, name, model_dir, tags, identity)

    monkeypatch.setattr(versions, "register_version", concurrent_promotion)
    job = deploy_job_of(model, _evaluation(tmp_path, 0.0, 0.9, champion=("raced/1", 0.5)), GATE, "raced")
    late = deploy_stage(job, tmp_path / "3", _new_run(), tags)
    assert (late.version, late.aliases, late.gate_passed) == ("3", ["challenger"], False)
    assert "champion moved to v2 meanwhile" in late.gate_reason and "run again to face v2" in late.gate_reason
    assert versions.version_for_alias("raced", "champion")["version"] == "2"
    assert tracking.client().get_model_version("raced", "3").description.startswith(
        "**Gate failed**: the gate passed against v1, but champion moved to v2 meanwhile")
