"""Fixtures shared by the serving tests (test_serving.py, test_serving_faults.py): the model folders, built once per
session, and an endpoint per module serving each; and by the export tests (test_export.py, test_base_export.py,
test_onnx_export.py): the demo trained with LoRA, once per session (the tests only read its folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ftcore.export_fixtures import trained_lora
from tests.ftcore.serving_fixtures import causal_endpoint, classifier_endpoint, serving_folders


@pytest.fixture(scope="session")
def lora(tmp_path_factory):
    """(the demo's prepared stages, its LoRA training's output)."""
    return trained_lora(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return serving_folders(tmp_path_factory)


@pytest.fixture(scope="module")
def causal(folders):
    """A running endpoint of a causal LM: (client, its serve config)."""
    with causal_endpoint(folders) as served:
        yield served


@pytest.fixture(scope="module")
def classifier(folders):
    """A running endpoint of a classifier: its client."""
    with classifier_endpoint(folders) as client:
        yield client
