"""Built-in steps that quarantine repeated rows, across all batches of a run: drop_duplicates (exact copies, by a
digest of their text) and drop_near_duplicates (MinHash + LSH with datasketch: rows whose word shingles overlap
above a Jaccard threshold with an earlier kept row, naming that row and the estimated similarity)."""

from __future__ import annotations

import hashlib
import re

import pandas as pd
from pydantic import Field

from ftcore.columns import IMAGES_COLUMN
from ftcore.registry import Batch, StepParams, StepResult, cleaning_step
from ftcore.schema import Seed

_WORD = re.compile(r"\w+")


class DropDuplicatesParams(StepParams):
    case_sensitive: bool = False
    columns: list[str] | None = None  # default: all text columns


@cleaning_step("drop_duplicates", params=DropDuplicatesParams, stateful=True)
def drop_duplicates(batch: Batch, p: DropDuplicatesParams) -> StepResult:
    """Quarantine exact duplicates (after any earlier normalisation), keeping the first occurrence."""
    keys = batch.identity(p.columns)
    if not p.case_sensitive:
        keys = keys.str.lower()
    # 16-byte digests of the rows seen so far, across batches: memory grows with distinct rows, not their text.
    first_seen: dict[bytes, int] = batch.state.setdefault("first_seen", {})
    reasons = pd.Series("", index=batch.frame.index, dtype=object)
    for index, key in keys.items():
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        first = first_seen.setdefault(digest, index)
        if first != index:
            reasons[index] = f"duplicate of row {first}"
    return StepResult.split(batch.frame, reasons == "", reasons)


class DropNearDuplicatesParams(StepParams):
    threshold: float = Field(0.85, gt=0.0, lt=1.0, description="estimated Jaccard similarity that counts as a copy")
    columns: list[str] | None = Field(None, description="default: all text columns, joined")
    shingle_words: int = Field(3, ge=1, description="words per shingle")
    num_perm: int = Field(128, ge=16, description="MinHash permutations: more is more exact and slower")
    seed: Seed = 1


def _shingles(text: str, n: int, images: str = "") -> set[bytes]:
    """Word n-grams of the text; of an image row, tagged with its images, so that only rows showing the same
    images can be near-duplicates (two pictures with similar captions are two rows)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {f"{images}{' '.join(words)}".encode()} if words else set()
    return {f"{images}{' '.join(words[i : i + n])}".encode() for i in range(len(words) - n + 1)}


@cleaning_step("drop_near_duplicates", params=DropNearDuplicatesParams, stateful=True)
def drop_near_duplicates(batch: Batch, p: DropNearDuplicatesParams) -> StepResult:
    """Quarantine rows whose text nearly repeats an earlier row (MinHash LSH over word shingles)."""
    from datasketch import MinHash, MinHashLSH

    texts = pd.concat([batch.text(c) for c in p.columns or batch.text_columns], axis=1).agg(" ".join, axis=1)
    # The index and the kept rows' signatures span every batch of the run, so copies in different batches are found.
    if "lsh" not in batch.state:  # built once per run: the constructor optimises its band layout, which is slow
        batch.state["lsh"] = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm)
    lsh = batch.state["lsh"]
    kept_hashes: dict[str, MinHash] = batch.state.setdefault("kept", {})
    reasons = pd.Series("", index=batch.frame.index)
    images = batch.frame[IMAGES_COLUMN] if IMAGES_COLUMN in batch.frame else pd.Series("", index=texts.index)
    for index, text in texts.items():
        minhash = MinHash(num_perm=p.num_perm, seed=p.seed)
        minhash.update_batch(list(_shingles(text, p.shingle_words, images[index])))
        # LSH candidates are probable matches; confirm with the estimated Jaccard before quarantining.
        matches = [(minhash.jaccard(kept_hashes[key]), key) for key in lsh.query(minhash)]
        similar = [(j, key) for j, key in matches if j >= p.threshold]
        if similar:
            jaccard, key = max(similar)
            reasons[index] = f"near-duplicate of row {key} (estimated Jaccard {jaccard:.2f})"
        else:
            lsh.insert(str(index), minhash)
            kept_hashes[str(index)] = minhash
    return StepResult.split(batch.frame, reasons == "", reasons)
