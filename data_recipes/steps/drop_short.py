"""Example of a data engineer's step: quarantine rows whose answer is too short to be useful."""

from ftcore.registry import Batch, StepParams, StepResult, cleaning_step


class DropShort(StepParams):
    column: str = "completion"
    min_chars: int = 2


@cleaning_step("drop_short", params=DropShort)
def drop_short(batch: Batch, p: DropShort) -> StepResult:
    """Quarantine rows whose `column` has fewer than `min_chars` characters."""
    lengths = batch.frame[p.column].str.len()
    reason = lengths.map(lambda n: f"{p.column} has {n} chars < {p.min_chars}")
    return StepResult.split(batch.frame, lengths >= p.min_chars, reason)
