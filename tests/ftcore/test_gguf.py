"""GGUF files written by ftcore/deploy/gguf.py from model-zoo folders shaped like real downloads, read back through
transformers' GGUF loader: the two vocabularies it writes (SentencePiece-style BPE with byte fallback, whose scores
come from the merge order; byte-level BPE with its pre-tokenizer named) and a family whose head size transformers'
reader does not take from the file (Qwen3). The demo's model through `ftflow export` is in test_export.py."""

from __future__ import annotations

import json
import shutil

import pytest

from ftcore.deploy import gguf
from ftcore.errors import UserError
from ftcore.models.gguf_header import read_metadata
from tests.models.zoo import folder, vocabularies_fetched

pytestmark = pytest.mark.skipif(not vocabularies_fetched(), reason="tokenizer files not fetched: make zoo-fetch")


# Qwen3's 151k-token vocabulary takes transformers' GGUF reader over 30 s to parse: in `make test-slow`.
@pytest.mark.parametrize("family", ["mistral", pytest.param("qwen3", marks=pytest.mark.slow)])
def test_a_zoo_folder_reads_back_with_the_same_tokens_and_logits(family, tmp_path):
    path = tmp_path / f"{family}-q8_0.gguf"
    gguf.write_gguf(folder(family), path, "q8_0", f"{family}-test")
    check = gguf.check_gguf(folder(family), path, gguf.PLAIN_PROMPTS)
    # Measured: max |logit difference| 0.009 (Mistral) and 0.010 (Qwen3), 96% of the top tokens the same: the
    # untrained models' logits are near ties, which q8_0's rounding flips.
    assert check.same_tokens and check.max_logit_diff < 0.05 and check.top1_agreement >= 0.9, check.describe()
    metadata, _ = read_metadata(path)
    assert metadata["general.name"] == f"{family}-test" and metadata["tokenizer.chat_template"]
    assert metadata["tokenizer.ggml.model"] == ("llama" if family == "mistral" else "gpt2")
    if family == "qwen3":
        assert metadata["tokenizer.ggml.pre"] == "qwen2"


def test_a_split_pattern_llama_cpp_has_no_name_for_is_refused_in_one_line(tmp_path):
    copy = shutil.copytree(folder("qwen2"), tmp_path / "qwen2")
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    split = next(s for s in tokenizer["pre_tokenizer"]["pretokenizers"] if s["type"] == "Split")
    split["pattern"]["Regex"] = r"\p{L}+|\s+"
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(UserError, match=r"^gguf: the tokenizer splits text with a pattern llama\.cpp has no name for"):
        gguf.write_gguf(copy, tmp_path / "out.gguf", "f16", "x")


def test_a_write_that_fails_part_way_leaves_no_file(tmp_path, monkeypatch):
    import gguf as gguf_package

    from tests.ftcore.gguf_writer import tiny_llama_folder

    model = tiny_llama_folder(tmp_path / "tiny", ["a small corpus of words to train a tokenizer on"] * 20)
    written = []

    def quantize_then_fail(array, qtype):
        if written:
            raise OSError(28, "No space left on device")
        written.append(qtype)
        return gguf_package.quantize(array, qtype)

    monkeypatch.setattr(gguf_package, "quantize", quantize_then_fail)
    with pytest.raises(OSError, match="No space left"):
        gguf.write_gguf(model, tmp_path / "out.gguf", "q8_0", "x")
    assert written and not list(tmp_path.glob("out.gguf*"))  # neither the file nor its .partial


def test_rope_scaling_gguf_does_not_write_is_refused_in_either_config_form(tmp_path):
    copy = shutil.copytree(folder("llama3"), tmp_path / "llama3", ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((copy / "config.json").read_text())
    for kind, rope in (("llama3", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}),
                       ("yarn", {"rope_parameters": None, "rope_scaling": {"type": "yarn", "factor": 4.0}})):
        (copy / "config.json").write_text(json.dumps(config | rope))
        assert gguf.refusal(copy) == (f"rope scaling {kind!r} is not written to GGUF here (default and linear are); "
                                      "convert with llama.cpp's convert_hf_to_gguf.py")
    (copy / "config.json").write_text(json.dumps(config | {"rope_parameters": None, "rope_theta": 1e6,
                                                           "rope_scaling": {"type": "linear", "factor": 2.0}}))
    assert gguf.refusal(copy) is None
