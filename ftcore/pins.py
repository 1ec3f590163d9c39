"""What a run pins before any stage runs: every reference that could move while it runs (an alias, a file, a query)
is resolved once, here, into the values the stages receive. A moved alias or an edited file then changes the
affected stages' cache keys, and a run never sees two versions of "the champion" (docs/architecture.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ftcore import versions
from ftcore.data.retained import RetainedData, champion_data, file_data, held_out_data
from ftcore.data.sources.config import FileSource, HfDatasetSource, RegisteredSource
from ftcore.deploy.publish import MODEL_HASH_TAG
from ftcore.hashing import hash_dir, hash_file
from ftcore.models.registered import ModelRef, pin_reference, pin_registered
from ftcore.recipe import Recipe
from ftcore.training.config import CHAMPION_DATA


class Champion(BaseModel):
    """The current champion and the content hash of its model (its `model_hash` tag)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: ModelRef
    model_hash: str | None


class Pins(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: dict[str, str]  # each data source's fingerprint (collect's cache depends on it)
    registered: dict[str, ModelRef] = {}  # each registered version the data sources or merge.sources name, by URI
    start: ModelRef | None = None  # model.source champion: the version continued
    reward_model: ModelRef | None = None  # objective rl: the reward model
    champion: Champion | None = None  # the version the candidate must beat; None before the first
    retained: RetainedData | None = None  # continual: the data the model must not forget
    forgetting: RetainedData | None = None  # what forgetting is measured on


def pin(recipe: Recipe) -> Pins:
    registered = registered_versions(recipe)
    start = starting_version(recipe, registered)
    retained = retained_data(recipe, start)
    return Pins(sources=source_fingerprints(recipe, registered), registered=registered, start=start,
                reward_model=pinned_reward_model(recipe), champion=current_champion(recipe), retained=retained,
                forgetting=forgetting_set(recipe, retained))


def registered_versions(recipe: Recipe) -> dict[str, ModelRef]:
    """The version each registered URI of the data sources and merge.sources points at now, pinned once: a merge's
    adapters and the test rows they are scored on come from the same versions."""
    uris = {source.model: f"data.sources ({source.label()})" for source in recipe.data.all_sources()
            if isinstance(source, RegisteredSource)}
    uris |= {uri: f"merge.sources.{i}" for i, uri in enumerate(recipe.merge.sources)} if recipe.merge else {}
    return {uri: pin_reference(uri, field) for uri, field in uris.items()}


def source_fingerprints(recipe: Recipe, registered: dict[str, ModelRef]) -> dict[str, str]:
    """What collect's cache depends on: the content hash of every input file (every match of a glob) and saved
    dataset folder, and the pinned version of a registered source. A query or a URL can return new rows behind the
    same recipe, so those sources are read again on every run; the stages after collect are still skipped when the
    rows read are unchanged."""
    fingerprints = {}
    for source in recipe.data.all_sources():
        if isinstance(source, RegisteredSource):
            fingerprints[source.label()] = registered[source.model].fingerprint
        elif isinstance(source, FileSource):
            fingerprints.update({str(path): hash_file(path) for path in source.files()})
        elif isinstance(source, HfDatasetSource) and source.local_path():
            fingerprints[source.path] = hash_dir(source.local_path())
        else:
            fingerprints[source.label()] = f"read at {time.time_ns()}"
    return fingerprints


def starting_version(recipe: Recipe, registered: dict[str, ModelRef]) -> ModelRef | None:
    """model.source champion: the version to continue from (the champion now, or model.version); a merge's first
    source, whose base every source shares (the train stage checks it)."""
    if recipe.merge is not None:
        return registered[recipe.merge.sources[0]]
    if recipe.model.source != "champion":
        return None
    name = recipe.model.registered_model or recipe.registered_model
    version = None if recipe.model.version is None else str(recipe.model.version)
    return pin_registered(name, versions.CHAMPION, version, "model.source: champion")


def current_champion(recipe: Recipe) -> Champion | None:
    found = versions.version_for_alias(recipe.registered_model, versions.CHAMPION)
    if found is None:
        return None
    ref = pin_registered(recipe.registered_model, None, found["version"], "deploy.registered_model")
    return Champion(ref=ref, model_hash=found["tags"].get(MODEL_HASH_TAG))


def rival(champion: Champion | None, trained_hash: str) -> ModelRef | None:
    """The champion to score beside the candidate on this test set, unless it is the candidate itself (an unchanged
    recipe run again): then nothing changes for the evaluate stage, whose cached result stands."""
    if champion is None or champion.model_hash == trained_hash:
        return None
    return champion.ref


def pinned_reward_model(recipe: Recipe) -> ModelRef | None:
    if recipe.reward is None or recipe.reward.model is None:
        return None
    return pin_reference(recipe.reward.model, "reward.model")


def retained_data(recipe: Recipe, start: ModelRef | None) -> RetainedData | None:
    """continual: the champion's own dataset, or a file of general data."""
    if recipe.continual is None:
        return None
    if recipe.continual.data == CHAMPION_DATA:
        return champion_data(start)
    return file_data(Path(recipe.continual.data), recipe.data, recipe.data.split.seed)


def forgetting_set(recipe: Recipe, retained: RetainedData | None) -> RetainedData | None:
    """What forgetting is measured on: evaluate.forgetting's general data, else continual's retained test rows."""
    if recipe.evaluate.forgetting is not None:
        return held_out_data(recipe.evaluate.forgetting.data, recipe.evaluate.forgetting.max_rows, recipe.data)
    return retained
