"""The pipeline's seven stages, in order: on the floor, because the recipe (stages' settings, `--until`) and the stages
themselves (deploy reads what evaluate logged) both name them."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    collect = "collect"
    clean_balance = "clean_balance"
    init = "init"
    train = "train"
    evaluate = "evaluate"
    deploy = "deploy"
    monitor = "monitor"


STAGES: list[Stage] = list(Stage)
LAST_STAGE = STAGES[-1]  # `until` it: the whole pipeline
