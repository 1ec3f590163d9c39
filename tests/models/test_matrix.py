"""A representative slice of the support matrix (the whole of it: `make compat`, which writes docs/models.md).

The slice covers what differs between families and breaks first: a real SentencePiece tokenizer with its chat
template and a sliding window (Mistral), Conv1D projections found for the bottleneck adapter (GPT-2), fused q/k/v
with prefix tuning's cache under DPO (Phi-3), a mixture of experts (Mixtral), an encoder classifier (BERT), and a
cell of each kind the rules refuse, refused by `ftflow validate` in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_input.harness import assert_user_error, invoke_process
from tests.models.matrix import recipe, run_cell
from tests.models.zoo import BY_NAME, vocabularies_fetched

pytestmark = pytest.mark.skipif(not vocabularies_fetched(), reason="tokenizer files not fetched: make zoo-fetch")

SLICE = [("mistral", "lora", "sft"), ("gpt2", "adapter", "sft"), ("phi3", "prefix", "dpo"),
         ("mixtral", "ia3", "sft"), ("bert", "lora", "classification")]


@pytest.mark.parametrize(("family", "method", "objective"), SLICE, ids=["-".join(cell) for cell in SLICE])
def test_cell_trains_exports_and_answers(family: str, method: str, objective: str, tmp_path: Path) -> None:
    cell = run_cell(family, method, objective, tmp_path)
    assert cell.status == "passed", cell.reason
    details = cell.details
    assert details["last_loss"] < details["first_loss"]
    assert details["trainable_changed"] == details["trainable_tensors"] > 0
    assert not details["frozen_changed"] and details["frozen_tensors"] > 0  # embeddings and norms at least
    assert details["answer"] is not None


# Each rule once; the first also through `ftflow validate` in a process of its own (the others reach the same
# check_recipe_model in process, through run_cell).
REFUSED = [("qwen2_classifier", "prompt", "classification", "last token"),
           ("gpt2", "loha", "sft", "Conv1D"),
           ("mixtral", "prefix", "dpo", "load-balancing loss"),
           ("mixtral", "dora", "sft", "no DoRA for parameters"),
           ("deberta_v2", "prefix", "classification", "does not take")]


@pytest.mark.parametrize(("family", "method", "objective", "why"), REFUSED,
                         ids=["-".join(cell[:2]) for cell in REFUSED])
def test_refused_cell_is_one_line_from_validate(family: str, method: str, objective: str, why: str,
                                                tmp_path: Path) -> None:
    """A cell the family's architecture does not allow: validate says why in one line and exits 2, before anything
    loads, and the matrix records it as refused (not failed)."""
    if REFUSED.index((family, method, objective, why)) == 0:
        path = recipe(BY_NAME[family], method, objective, tmp_path)
        assert_user_error(invoke_process(["validate", path]), f"method.name: {method}", why)

    cell = run_cell(family, method, objective, tmp_path / "cell")
    assert cell.status == "refused" and why in cell.reason


def test_validate_of_a_recipe_on_a_model_folder_prints_its_one_line_and_nothing_else(tmp_path: Path) -> None:
    """The model checks import torch, PEFT, bitsandbytes and torchao, which print notes as they load (kernels not
    found, deprecations): none of them reach the user."""
    outcome = invoke_process(["validate", recipe(BY_NAME["qwen2"], "lora", "sft", tmp_path)])
    assert (outcome.code, outcome.stderr) == (0, ""), outcome.stderr
    assert outcome.stdout.startswith("ok ") and len(outcome.stdout.splitlines()) == 1, outcome.stdout


def test_validate_refuses_what_the_scratch_model_cannot_train(tmp_path: Path) -> None:
    """A scratch model is the decoder ftflow builds: the same rule holds before anything is built."""
    path = recipe(BY_NAME["bert"], "p_tuning", "classification", tmp_path)
    text = path.read_text().replace("source: pretrained", "source: scratch")
    path.write_text("\n".join(line for line in text.splitlines() if "name_or_path" not in line) + "\n")
    assert_user_error(invoke_process(["validate", path]), "method.name: p_tuning does not fit the scratch llama",
                      "last token")
