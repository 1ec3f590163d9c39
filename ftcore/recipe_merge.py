"""A `merge:` recipe's sections (docs/merging.md): what its other sections default to, derived from its sources, and
what it cannot also ask. recipe.py applies both when a recipe loads."""

from __future__ import annotations

from ftcore.models.config import MODEL_URI, LoraMethod, MethodConfig, ModelConfig
from ftcore.objectives import Objective, objectives_where
from ftcore.training.config import MergeConfig


def with_merge_defaults(raw: dict) -> dict:
    """A `merge:` recipe's data are its sources' own datasets: each source's train and test splits, as its model
    saw them (templated already, and cleaned by its own run: no step runs again, so each test split stays the one
    its source was scored on), every row tagged with its source's task; the base is the sources' own (the first
    source's adapter taken off its weights: model.source champion, start adapter); the objective multitask, which
    scores every task apart. A section the recipe gives itself is kept (its problems reported by merge_problem)."""
    merge = raw.get("merge")
    sources = merge.get("sources") if isinstance(merge, dict) else None
    if not isinstance(sources, list):
        return raw  # no merge, or the merge section's own validation reports it
    # From the sources alone (its other fields' problems are reported by its own validation), and only those named
    # right: a recipe with one bad source gets that one error, not a second about its data.
    named = [source for source in sources if isinstance(source, str) and MODEL_URI.match(source)]
    tasks = MergeConfig.model_construct(sources=named).tasks()

    def registered(split: str) -> list[dict]:
        return [{"type": "registered", "model": model, "split": split, "task": task} for model, task in tasks.items()]

    data = {"sources": registered("train"), "test_sources": registered("test"), "tasks": {t: {} for t in
            tasks.values()}, "prompt_template": "{prompt}", "completion_template": "{completion}"}
    return {"objective": "multitask", "data": data, "clean": {"steps": []},
            "model": {"source": "champion", "start": "adapter"}, **raw}


def merge_problem(merge: MergeConfig | None, objective: Objective, model: ModelConfig, method: MethodConfig,
                  training_sections: dict[str, object]) -> str | None:
    """What a `merge:` recipe cannot also ask: another base, another method, or a section that trains
    (`training_sections`: name -> the recipe's value)."""
    if merge is None:
        return None
    if not objective.tagged_sources:
        return (f"merge: the merged adapter is scored on each source's task: objective "
                f"{' or '.join(objectives_where('tagged_sources'))} (or leave objective out), not {objective.name!r}")
    if model.source != "champion" or model.start != "adapter" or model.version is not None:
        return "model: a merge's base is its sources' own; remove the model section"
    if not isinstance(method, LoraMethod):
        return f"method: a merge combines LoRA adapters; remove method (it is {method.name})"
    for section, value in training_sections.items():
        if value is not None:
            return f"{section}: a merge trains nothing; remove {section}"
    return None
