"""Hugging Face dataset sources: folders written by save_to_disk (Dataset and DatasetDict), and the hub offline."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from ftcore.data.sources.config import HfDatasetSource
from tests.ftcore.source_reading import read_all, read_error

COLUMNS = {
    "question": [f"What is Q{i}?" for i in range(1, 6)],
    "answer": ["A1", None, "A3", "A4", "A5"],
    "label": [1, 0, None, 1, 0],
    "messages": [[{"role": "user", "content": f"Q{i}"}] for i in range(1, 6)],
}


def hf_source(path: Path | str, **kw) -> HfDatasetSource:
    return HfDatasetSource.model_validate({"type": "hf_dataset", "path": str(path), **kw})




@pytest.fixture
def saved_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "qa_dataset"
    datasets.Dataset.from_dict(COLUMNS).save_to_disk(str(folder))
    return folder


@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    folder = tmp_path / "qa_splits"
    whole = datasets.Dataset.from_dict(COLUMNS)
    datasets.DatasetDict({"train": whole.select(range(4)), "test": whole.select([4])}).save_to_disk(str(folder))
    return folder


def test_dataset_rows_come_back_in_chunks_of_batch_rows(saved_dataset: Path) -> None:
    chunks = read_all(hf_source(saved_dataset))
    assert [len(c.rows) for c in chunks] == [2, 2, 1]
    assert {c.origin for c in chunks} == {str(saved_dataset)}
    rows = [r for c in chunks for r in c.rows.to_dict("records")]
    assert [r["source_row"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["question"] for r in rows] == COLUMNS["question"]
    assert rows[1]["answer"] is None  # a null stays None
    assert [r["label"] for r in rows] == [1, 0, None, 1, 0]  # ints stay ints in every chunk, not floats
    assert rows[0]["messages"] == [{"role": "user", "content": "Q1"}]  # nested features as Python lists/dicts


def test_relative_folder_is_found_next_to_the_recipe(saved_dataset: Path) -> None:
    source = HfDatasetSource.model_validate({"type": "hf_dataset", "path": saved_dataset.name},
                                            context={"base_dir": saved_dataset.parent})
    assert sum(len(c.rows) for c in read_all(source)) == 5


def test_dataset_dict_split(saved_dict: Path) -> None:
    chunks = read_all(hf_source(saved_dict, split="train"), batch_rows=3)
    assert [len(c.rows) for c in chunks] == [3, 1]
    assert chunks[0].origin == f"{saved_dict}[train]"
    [test] = read_all(hf_source(saved_dict, split="test"))
    assert test.rows["question"].tolist() == ["What is Q5?"]


def test_dataset_dict_without_split_lists_the_splits(saved_dict: Path) -> None:
    message = read_error(hf_source(saved_dict, name="glossary"))
    assert message == f"data.sources (glossary {saved_dict}): the dataset has splits train, test; set split to one " \
                      f"of them"
    assert "no split 'validation'; the dataset has train, test" in read_error(hf_source(saved_dict, split="validation"))


def test_split_on_a_single_dataset_is_refused(saved_dataset: Path) -> None:
    assert "holds a single Dataset, which has no splits; remove split" in read_error(
        hf_source(saved_dataset, split="train"))


def test_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    message = read_error(hf_source(tmp_path / "notes"))
    assert message.startswith(f"data.sources (notes {tmp_path / 'notes'}): not a dataset folder")
    assert "save_to_disk" in message


def test_hub_id_offline_says_to_use_a_local_folder() -> None:
    # tests/conftest.py sets HF_HUB_OFFLINE=1, as on a machine without the hub.
    message = read_error(hf_source("someone/clinical-qa", split="train"))
    assert message.startswith("data.sources (clinical-qa someone/clinical-qa): no such local folder, and the Hugging "
                              "Face hub cannot be reached")
    assert "save_to_disk(folder)" in message
