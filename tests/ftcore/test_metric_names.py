"""The MLflow metric names (tracking.metric_key), as MLflow 3.17's UI orders them: its charts view makes a section of
each name's part before the first '/' and sorts the sections by plain character order."""

from ftcore import tracking


def test_the_losses_then_the_other_training_steps_then_each_stage_have_a_section():
    assert tracking.metric_key("loss") == "1 loss/train"
    assert tracking.metric_key("eval_loss") == "1 loss/validation"
    assert tracking.metric_key("learning_rate") == "2 training/learning_rate"
    assert tracking.metric_key("eval_rewards/accuracies") == "2 training/eval_rewards/accuracies"
    assert tracking.metric_key("exact_match", "evaluate") == "evaluate/exact_match"
    assert tracking.metric_key("train_loss", "train") == "train/train_loss"


def test_the_training_loss_chart_comes_first():
    keys = [tracking.metric_key(name, stage) for name, stage in [
        ("rows_train", "clean_balance"), ("exact_match", "evaluate"), ("Version", "deploy"), ("grad_norm", None),
        ("eval_loss", None), ("learning_rate", None), ("loss", None), ("_runtime", "train")]]
    sections = sorted({key.split("/")[0] for key in keys})
    first = sorted(key for key in keys if key.startswith(f"{sections[0]}/"))
    assert sections[:2] == ["1 loss", "2 training"] and first == ["1 loss/train", "1 loss/validation"]
