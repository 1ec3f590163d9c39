"""The search's bookkeeping (ftcore/tuning/search.py) on a real Optuna study in FTFLOW_HOME's tune.db: the budget, a
configuration drawn again, outcomes told to the study, the study's name, a trial's objective values."""

from __future__ import annotations

import time

import pytest

from ftcore.tuning.config import TuneConfig
from ftcore.tuning.report import study_summary
from ftcore.tuning.search import Outcome, Search, objective_values, study_name


def config(space: dict, n_trials: int = 3, **settings) -> TuneConfig:
    return TuneConfig.model_validate({"space": space, "objectives": [{"metric": "exact_match"}],
                                      "n_trials": n_trials, **settings})


RATES = {"train.learning_rate": {"log_uniform": [1e-4, 1e-2]}}


def test_the_study_is_named_by_what_it_searches_not_by_its_budget():
    name = study_name("qa", "abc", config(RATES))
    assert name.startswith("qa-") and name == study_name("qa", "abc", config(RATES, n_trials=50, timeout_s=60))
    assert name != study_name("qa", "abd", config(RATES))  # another recipe
    assert name != study_name("qa", "abc", config({"train.epochs": {"int": [1, 3]}}))  # another space


def test_trials_run_until_the_budget_and_each_outcome_is_told():
    search = Search("qa-1", config(RATES), seed=0)
    outcomes = iter([Outcome("complete", [0.5]), Outcome("pruned", pruned_at=20), Outcome("failed", reason="OOM")])
    ran = []
    while (trial := search.next_trial()) is not None:
        ran.append(trial.overrides)
        search.run(trial, lambda _: next(outcomes))
    assert len(ran) == 3 and all(o[0].startswith("train.learning_rate=") for o in ran)
    rows = study_summary(search.study, search.tune)["trials"]
    assert [(r["state"], r["values"], r["pruned_at_step"], r["failure"]) for r in rows] == [
        ("complete", [0.5], None, None), ("pruned", None, 20, None), ("failed", None, None, "OOM")]
    assert all(r["overrides"] == o for r, o in zip(rows, ran, strict=True))
    # Run again (a resumed search), the study is the same one and its budget is spent.
    assert Search("qa-1", config(RATES), seed=0).next_trial() is None
    # A larger budget continues it.
    assert Search("qa-1", config(RATES, n_trials=4), seed=0).next_trial().number == 3


def test_a_configuration_drawn_again_takes_the_earlier_outcome_instead_of_training_again():
    search = Search("qa-2", config({"method.r": {"choice": [8]}}, n_trials=3), seed=0)
    first = search.next_trial()
    search.run(first, lambda _: Outcome("complete", [0.7]))
    assert search.next_trial() is None  # the two other draws were the same configuration: nothing to train
    rows = study_summary(search.study, search.tune)["trials"]
    assert [(r["state"], r["values"], r["duplicate_of"]) for r in rows] == [
        ("complete", [0.7], None), ("complete", [0.7], 0), ("complete", [0.7], 0)]
    assert study_summary(search.study, search.tune)["best"]["number"] == 0


def test_a_timeout_starts_no_trial_after_it(monkeypatch):
    import ftcore.tuning.search as search_module

    search = Search("qa-3", config(RATES, timeout_s=10), seed=0)
    monkeypatch.setattr(search_module.time, "monotonic", lambda: search.started + 11)
    assert search.next_trial() is None


def test_objective_values_come_from_the_stages_that_measure_them():
    stages = {"evaluate": {"metrics": {"exact_match": 0.4}}, "train": {"metrics": {"eval_loss": 1.5,
                                                                                      "runtime_s": 12.0}},
              "init": {"metrics": {"trainable_params": 1000}}}
    tune = TuneConfig.model_validate({"space": RATES, "pruner": "none", "objectives": [
        {"metric": "exact_match"}, {"metric": "validation_loss", "direction": "minimize"},
        {"metric": "train_seconds", "direction": "minimize"}, {"metric": "trainable_parameters",
                                                               "direction": "minimize"}]})
    assert objective_values(tune, stages) == [0.4, 1.5, 12.0, 1000.0]
    del stages["train"]["metrics"]["eval_loss"]
    with pytest.raises(KeyError, match="the train stage measured no eval_loss"):
        objective_values(tune, stages)


def test_several_objectives_give_a_pareto_front_and_the_best_of_it_on_the_first():
    tune = TuneConfig.model_validate({"space": RATES, "pruner": "none", "n_trials": 3, "objectives": [
        {"metric": "exact_match"}, {"metric": "train_seconds", "direction": "minimize"}]})
    search = Search("qa-4", tune, seed=0)
    outcomes = iter([[0.5, 10.0], [0.6, 20.0], [0.4, 30.0]])  # the third is dominated by the first
    while (trial := search.next_trial()) is not None:
        search.run(trial, lambda _: Outcome("complete", next(outcomes)))
    summary = study_summary(search.study, search.tune)
    assert sorted(summary["pareto_front"]) == [0, 1] and summary["best"]["number"] == 1


def test_on_a_team_server_the_study_lives_in_mlflows_postgresql_in_a_schema_of_its_own(postgres_url, monkeypatch):
    import os

    import sqlalchemy

    from ftcore.tuning.storage import SCHEMA, storage_url

    # A user's MLFLOW_TRACKING_URI holds its password; the test server's URL names it as ${env:...}.
    url = sqlalchemy.make_url(postgres_url).set(password=os.environ["FTFLOW_TEST_PGPASSWORD"])
    url = url.render_as_string(hide_password=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert storage_url() == url
    name = f"qa-pg-{time.time_ns()}"  # the database outlives the test
    search = Search(name, config(RATES, n_trials=2), seed=0)
    while (trial := search.next_trial()) is not None:
        search.run(trial, lambda _: Outcome("complete", [0.5]))
    assert Search(name, config(RATES, n_trials=2), seed=0).next_trial() is None  # resumed: the budget is spent
    engine = sqlalchemy.create_engine(url)
    try:
        tables = sqlalchemy.inspect(engine).get_table_names(schema=SCHEMA)
    finally:
        engine.dispose()
    assert {"studies", "trials", "alembic_version"} <= set(tables)


def test_the_search_waits_for_another_workers_trial_and_takes_over_one_whose_worker_died(monkeypatch):
    import threading

    monkeypatch.setenv("FTFLOW_TUNE_HEARTBEAT_S", "1")  # stale after three seconds
    tune = config(RATES, n_trials=2)
    search, other = Search("qa-5", tune, seed=0), Search("qa-5", tune, seed=0, worker=1)
    running = other.next_trial()  # another worker's trial, beating its heartbeat while it runs
    ended = threading.Event()
    beating = threading.Thread(target=lambda: other.run(running, lambda _: ended.wait(30) and Outcome("complete",
                                                                                                      [0.1])))
    beating.start()
    threading.Timer(2, ended.set).start()
    assert search.wait_for_running() is False  # returned once that trial ended
    beating.join()
    assert [t.state.name for t in search.trials()] == ["COMPLETE"]
    # A trial whose worker died (no heartbeat for three beats) is failed and queued again for this worker.
    dead = search.next_trial()
    search.storage.record_heartbeat(dead.hook.trial_id)
    time.sleep(3.5)
    assert search.wait_for_running() is True
    retry = search.next_trial()
    assert retry.values == dead.values and retry.number == dead.number + 1
