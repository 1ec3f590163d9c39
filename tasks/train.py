import json

from prefect import get_run_logger

from ftcore.alignment.rewards import reward_modules
from ftcore.config import ContinualConfig, RewardConfig, TrainConfig
from ftcore.data.retained import RetainedData
from ftcore.models.registered import ModelRef, model_folder
from ftcore.outputs import DatasetOutput, ModelOutput, TrainOutput
from ftcore.paths import stage_dir
from ftcore.training.train import train_model
from tasks.common import source_hash, stage_inputs, stage_task


@stage_task("train", plugin_code=lambda params: source_hash(reward_modules(params.get("reward"))))
def train(base: ModelOutput, dataset: DatasetOutput, train: TrainConfig, task: str, reward: RewardConfig | None = None,
          reward_model: ModelRef | None = None, continual: ContinualConfig | None = None,
          retained: RetainedData | None = None) -> TrainOutput:
    """Fine-tune the init stage's model on the train split for the recipe's task (task rl: against `reward`, with
    the pinned reward model; continual: replaying and anchored to the retained data)."""
    out_dir = stage_dir("train", stage_inputs(base=base.content_hash, dataset=dataset.content_hash, train=train,
                                              task=task, reward=reward, reward_model=reward_model,
                                              continual=continual, retained=retained and retained.fingerprint))
    loss = dataset.artifacts.get("loss")
    out = train_model(base, dataset.splits, train, out_dir, task, json.loads(loss.read_text()) if loss else None,
                      reward=reward, reward_model_dir=model_folder(reward_model) if reward_model else None,
                      continual=continual, retained_train=retained.train if retained else None)
    m = out.metrics
    resumed = f" (resumed from step {m['resumed_from_step']:.0f})" if m["resumed_from_step"] else ""
    processes = f" in {m['processes']:.0f} processes ({train.distributed.strategy})" if m["processes"] > 1 else ""
    # Online RL's loss is about 0 by construction (rewards minus their group's mean): its progress is the reward.
    progress = (f"sampled answers' reward {m['mean_reward_first']:.3f} -> {m['mean_reward_last']:.3f}, "
                f"{m['groups_scored_alike']:.0%} of prompts' answers all scored alike"
                if "groups_scored_alike" in m else f"loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}")
    get_run_logger().info("trained %d steps%s in %.1f s%s; %s", m["steps"], processes, m["runtime_s"], resumed,
                          progress)
    return out
