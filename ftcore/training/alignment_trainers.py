"""TRL's alignment trainers, built from the recipe's train section with the arguments every trainer shares
(ftcore.training.train.trainer_arguments):

- objective dpo: DPOTrainer, KTOTrainer (the pairs unpaired into desirable and undesirable answers) or ORPOTrainer. With
  an adapter the reference model is the model with the adapter switched off, so no second copy is loaded; full
  fine-tuning loads the starting weights again as the reference.
- objective reward_model: RewardTrainer on a sequence classifier with one output (Bradley-Terry loss on the pairs).
- objective rl: GRPOTrainer or RLOOTrainer, sampling answers online and scoring them with the recipe's reward model and
  reward functions (ftcore.alignment.rewards).
"""

from __future__ import annotations

from pathlib import Path

from ftcore.alignment.config import RewardConfig
from ftcore.errors import UserError
from ftcore.training.jobs import TrainerSetup


def preference_trainer(s: TrainerSetup):
    pref, rows = s.cfg.preference, dict(train_dataset=s.train_rows, eval_dataset=s.eval_rows,
                                        processing_class=s.tokenizer)
    if pref.algorithm == "kto":
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(**s.shared, max_length=s.cfg.max_length, beta=pref.beta)
        return KTOTrainer(model=s.model, ref_model=_reference(s.model, s.run.job.base.base_path), args=args, **rows)
    if pref.algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=s.model, args=ORPOConfig(**s.shared, max_length=s.cfg.max_length, beta=pref.beta),
                           **rows)
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**s.shared, max_length=s.cfg.max_length, beta=pref.beta, loss_type=list(pref.loss_type),
                     loss_weights=pref.loss_weights, label_smoothing=pref.label_smoothing)
    return DPOTrainer(model=s.model, ref_model=_reference(s.model, s.run.job.base.base_path), args=args, **rows)


def _reference(model, base_path: Path):
    """None with an adapter (TRL switches it off for the reference), else the starting weights loaded again."""
    from accelerate.utils import is_peft_model

    from ftcore.models.load import reload_model

    if is_peft_model(model):
        return None
    reference = reload_model(base_path, dtype=model.dtype)
    reference.config.pad_token_id = model.config.pad_token_id
    return reference


def reward_model_trainer(s: TrainerSetup):
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    args = TrlRewardConfig(**s.shared, max_length=s.cfg.max_length)
    return RewardTrainer(model=s.model, args=args, train_dataset=s.train_rows, eval_dataset=s.eval_rows,
                         processing_class=s.tokenizer)


def rl_trainer(s: TrainerSetup):
    """GRPO or RLOO against the recipe's reward (the reward model and reward functions, from `reward_functions`)."""
    if s.run.job.reward is None:
        raise UserError("reward: objective rl needs a reward model or reward functions")
    rewards, weights = reward_functions(s.run.job.reward, s.run.reward_model_dir)
    rl, model, tokenizer, train_rows, shared = s.cfg.rl, s.model, s.tokenizer, s.train_rows, s.shared
    options = dict(max_completion_length=rl.max_completion_length, num_generations=rl.num_generations,
                   temperature=rl.temperature, beta=rl.kl_beta, reward_weights=weights,
                   # The tiny models of tests and demos rarely emit EOS: keep their clipped answers in the loss.
                   mask_truncated_completions=False, log_completions=False)
    if rl.algorithm == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer(model=model, reward_funcs=rewards, args=RLOOConfig(**shared, **options),
                           train_dataset=train_rows, processing_class=tokenizer,
                           reward_processing_classes=_reward_tokenizers(rewards))
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer(model=model, reward_funcs=rewards, args=GRPOConfig(**shared, **options),
                       train_dataset=train_rows, processing_class=tokenizer,
                       reward_processing_classes=_reward_tokenizers(rewards))


def _reward_tokenizers(rewards: list) -> list:
    return [getattr(r, "ftflow_tokenizer", None) for r in rewards]


def reward_functions(reward: RewardConfig, reward_model_dir: Path | None) -> tuple[list, list[float]]:
    """TRL's reward_funcs and their weights: the reward model (a sequence classifier with one output, its
    tokenizer attached for TRL) and one callable per registered reward function."""
    rewards, weights = [], []
    if reward_model_dir is not None:
        rewards.append(load_reward_model(reward_model_dir))
        weights.append(reward.model_weight)
    for spec in reward.functions:
        rewards.append(_trl_reward(spec.function, spec.params()))
        weights.append(spec.weight)
    return rewards, weights


def load_reward_model(path: Path):
    from ftcore.models.load import load_trained

    model, tokenizer = load_trained(path)
    if model.config.num_labels != 1:
        raise UserError(f"reward.model: {path} is a classifier with {model.config.num_labels} outputs; a reward "
                         "model has one (train it with objective: reward_model)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = "reward_model"  # TRL logs its scores as rewards/<last part of this>/mean
    model.eval()
    model.ftflow_tokenizer = tokenizer
    return model


def _trl_reward(name: str, params: dict):
    """A registered reward function as TRL calls one: `(prompts, completions, **columns) -> scores`."""
    from ftcore.alignment.rewards import score

    def reward(prompts, completions, **columns):
        rows = {k: v for k, v in columns.items() if isinstance(v, list) and len(v) == len(completions)}
        return score(name, params, prompts, completions, rows)

    reward.__name__ = name  # TRL logs each function's mean as rewards/<name>/mean
    return reward
