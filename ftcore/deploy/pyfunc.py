"""An export as an MLflow pyfunc model: what `mlflow.pyfunc.load_model(...).predict` and `mlflow models serve`
run. It loads the export's folder with `load_export` and answers a DataFrame:

- a causal LM: a `prompt` column (text as the model sees it), or a `messages` column (a chat: a list of
  {role, content}, written the way the model's training prompts were: through its chat template, or one user
  message in its prompt template; a chat it was not trained on is refused, ftcore/models/prompting.py) -> a `text`
  column, the greedy continuation; param `max_new_tokens`;
- a classifier: a `text` column -> a `label` column.

This module subclasses MLflow's PythonModel, so it imports MLflow; saving and logging the model go through
ftcore/tracking.py like every other MLflow call.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from ftcore.deploy.export import GGUF_KINDS, WEIGHTS, load_export
from ftcore.evaluation.classification import classify
from ftcore.models.generate import generate
from ftcore.models.peft_methods import is_classifier
from ftcore.models.prompting import read_prompting

DEFAULT_MAX_NEW_TOKENS = 64
BATCH_SIZE = 16
TEXT_OPENING_WORDS = 8  # a plain-text row's example request: its first words, for the model to continue
# How a refused chat is told to ask instead: pyfunc takes plain prompts in the `prompt` column.
INSTEAD = "pass a `prompt` column"
# What loading and running an export imports, pinned to the versions installed here, and what its kind adds (a GGUF
# file is read through the gguf package, an ONNX graph run by ONNX Runtime). ftcore itself travels with the model as
# code (code_paths), so an environment built from these requirements can load it.
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "torchao", "pandas",
                "pydantic", "pyyaml")


class ExportedModel(PythonModel):
    def load_context(self, context) -> None:
        folder = Path(context.artifacts[WEIGHTS])
        self.model, self.tokenizer = load_export(folder)
        self.prompting = read_prompting(folder, self.tokenizer)
        self.model.eval()
        self.classifier = is_classifier(self.model)

    # Typed, so MLflow takes the DataFrame as it comes (validated against the signature given when saving).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.classifier:
            texts = model_input["text"].astype(str).tolist()
            return pd.DataFrame({"label": classify(self.model, self.tokenizer, texts)})
        max_new_tokens = int((params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        outputs = generate(self.model, self.tokenizer, self.prompts(model_input), max_new_tokens, BATCH_SIZE)
        return pd.DataFrame({"text": [o.strip() for o in outputs]})

    def prompts(self, model_input: pd.DataFrame) -> list[str]:
        if "messages" in model_input:
            return [self.prompting.chat_prompt(self.tokenizer, [dict(m) for m in chat], INSTEAD)
                    for chat in model_input["messages"]]
        return model_input["prompt"].astype(str).tolist()


def signature(classifier: bool):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    if classifier:
        return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema([ColSpec("string", "label")]))
    chat = Array(Object([Property("role", "string"), Property("content", "string")]))
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt", required=False), ColSpec(chat, "messages", required=False)]),
        outputs=Schema([ColSpec("string", "text")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
    )


def input_example(test: pd.DataFrame | None, classifier: bool) -> pd.DataFrame:
    """The first test row as a request (a placeholder when there is no test split): its text for a classifier, its
    prompt, its chat up to the last answer, or the start of its text (a language model trained on plain text)."""
    row = test.iloc[0] if test is not None and len(test) else pd.Series(dtype=object)
    if classifier:
        return pd.DataFrame({"text": [str(row.get("text", "An example text."))]})
    if "messages" in row:
        chat = json.loads(row["messages"])
        last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
        return pd.DataFrame({"messages": [chat[:last]]})
    opening = " ".join(str(row.get("text", "Hello")).split()[:TEXT_OPENING_WORDS])
    return pd.DataFrame({"prompt": [str(row.get("prompt", opening))]})


def pip_requirements(kind: str) -> list[str]:
    extra = ["gguf"] if kind in GGUF_KINDS else ["onnxruntime"] if kind == "onnx" else []
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in (*REQUIREMENTS, *extra)]
