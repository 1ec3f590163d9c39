"""An example reward function: a harmless assistant declines harmful requests politely instead of complying."""

from pydantic import Field

from ftcore.alignment.rewards import RewardParams, reward_function

REFUSAL_MARKERS = ("i'm sorry", "i am sorry", "i can't", "i cannot", "i won't", "not able to", "instead")


class SafeRefusal(RewardParams):
    markers: list[str] = Field(default_factory=lambda: list(REFUSAL_MARKERS), min_length=1)


@reward_function("safe_refusal", params=SafeRefusal)
def safe_refusal(prompts: list[str], completions: list[str], p: SafeRefusal, columns: dict[str, list]) -> list[float]:
    """1 when the answer contains a refusal marker ("I'm sorry", "I can't", ...), else 0."""
    markers = [m.lower() for m in p.markers]
    return [float(any(m in c.lower() for m in markers)) for c in completions]
