"""Images per second of a vision-language model: in training (and the image collator's share of the step time) and
in evaluation, answered in batches against one at a time.

Runs the collect, clean and init stages of each shared recipe (archiscribe_ocr: Idefics3 over line tiles;
tuxpaint_captions: LLaVA on 64x64 pictures) on the recipe's own data and model, then trains `--steps` steps and
answers `--answers` test images with evaluate.batch_size and with batches of one, in this process.

    python bench/vision_throughput.py [--steps 40] [--answers 64] [--recipes archiscribe_ocr tuxpaint_captions]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "data_recipes" / "recipes" / "shared"


def measure(recipe_name: str, steps: int, answers: int, root: Path) -> dict:
    from transformers import TrainerCallback

    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import CollectJob, collect_stage
    from ftcore.evaluation.vision import answered, image_questions
    from ftcore.jobs import clean_job
    from ftcore.models.init import InitJob, init_stage
    from ftcore.models.load import load_trained
    from ftcore.recipe import load_recipe
    from ftcore.training.examples import read_split
    from ftcore.training.jobs import TrainJob
    from ftcore.training.train import train_stage

    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml", [f"train.max_steps={steps}", f"train.save_steps={steps + 1}",
                                                          "train.logging_steps=10"])
    dataset = clean_balance_stage(clean_job(recipe, collect_stage(CollectJob(data=recipe.data, sources={}),
                                                                  root / "collected")), root / "clean")
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec,
                              vision=recipe.train.vision), root / "init")

    class Timing(TrainerCallback):
        """The training loop's seconds (model loading and saving aside) and the collator's within them."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_train_end(self, args, state, control, train_dataloader=None, **kwargs):
            self.loop_s = time.perf_counter() - self.started
            self.collator_s = train_dataloader.collate_fn.seconds

    timing = Timing()
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                          root / "train", callbacks=[timing])
    model, processor = load_trained(trained.model_path)
    questions = image_questions(read_split(dataset.splits["test"]).head(answers))
    timings = {}
    for label, batch in (("batched", recipe.evaluate.batch_size), ("one_at_a_time", 1)):
        started = time.perf_counter()
        answered(model, processor, questions, recipe.evaluate.max_new_tokens, batch)
        timings[label] = time.perf_counter() - started
    return {
        "recipe": recipe_name, "architecture": recipe.model.scratch.architecture,
        "train_images_per_s": steps * recipe.train.batch_size / timing.loop_s, "train_loop_s": timing.loop_s,
        "collator_share": timing.collator_s / timing.loop_s, "train_loss_last": trained.metrics["train_loss_last"],
        "eval_images_per_s_batched": len(questions) / timings["batched"],
        "eval_images_per_s_one_at_a_time": len(questions) / timings["one_at_a_time"],
        "eval_speedup": timings["one_at_a_time"] / timings["batched"], "eval_batch_size": recipe.evaluate.batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--answers", type=int, default=64)
    parser.add_argument("--recipes", nargs="+", default=["archiscribe_ocr", "tuxpaint_captions"])
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")
    for name in args.recipes:
        with tempfile.TemporaryDirectory(prefix="vision-bench.") as tmp:
            os.environ["FTFLOW_HOME"] = str(Path(tmp) / "home")
            result = measure(name, args.steps, args.answers, Path(tmp))
        print(f"{result['recipe']} ({result['architecture']}): training {result['train_images_per_s']:.1f} images/s "
              f"over {args.steps} steps (the collator {result['collator_share']:.0%} of the loop's "
              f"{result['train_loop_s']:.1f} s); evaluation {result['eval_images_per_s_batched']:.1f} images/s in "
              f"batches of {result['eval_batch_size']} against {result['eval_images_per_s_one_at_a_time']:.1f} one "
              f"at a time: {result['eval_speedup']:.2f}x")


if __name__ == "__main__":
    main()
