"""The monitor's toxicity objective: logged outputs screened by the recipe's `evaluate.safety.toxicity` scorer with
the evaluate stage's own rule (`toxic_rows`), so a version is judged live exactly as it was judged before release.
The lexicon behind the default scorer is shared with the `filter_toxicity` cleaning step."""

from __future__ import annotations

import numpy as np

from ftcore.evaluation.screen import toxic_rows
from ftcore.safety.config import ToxicityScreenConfig


def toxic_flags(outputs: list[str], cfg: ToxicityScreenConfig) -> np.ndarray:
    """1.0 for each output the scorer rates at or above the threshold, else 0.0; their mean is `toxic_rate`."""
    return toxic_rows(outputs, cfg).values
