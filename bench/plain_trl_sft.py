"""The baseline: the same fine-tuning as ftflow's train stage, written as a plain TRL script.

Loads a base model and its initial LoRA adapter, trains on a Parquet split with SFTTrainer, saves the adapter.
No ftflow imports. Prints one JSON line with the seconds spent: imports, and the work timed like ftflow's train
stage (load, tokenize, train, save). Imports are left out of `total_s` because ftflow's train stage runs in a
process where the init stage has already imported torch, transformers and PEFT: the comparison is conservative.

    python bench/plain_trl_sft.py --base DIR --adapter DIR --train FILE --out DIR --hparams JSON
"""

import argparse
import json
import time

imports_started = time.perf_counter()
import pandas as pd  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    for arg in ("--base", "--adapter", "--train", "--out", "--hparams"):
        parser.add_argument(arg, required=True)
    args = parser.parse_args()
    hp = json.loads(args.hparams)
    imports_s = time.perf_counter() - imports_started
    started = time.perf_counter()

    model = AutoModelForCausalLM.from_pretrained(args.base)
    model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    train = Dataset.from_pandas(pd.read_parquet(args.train)[["prompt", "completion"]], preserve_index=False)
    config = SFTConfig(
        output_dir=args.out,
        num_train_epochs=hp["epochs"],
        per_device_train_batch_size=hp["batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        learning_rate=hp["learning_rate"],
        lr_scheduler_type=hp["lr_scheduler"],
        max_length=hp["max_length"],
        seed=hp["seed"],
        logging_steps=hp["logging_steps"],
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    train_started = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - train_started
    model.save_pretrained(args.out)
    print(json.dumps({"total_s": time.perf_counter() - started, "imports_s": imports_s, "train_s": train_s,
                      "steps": result.global_step, "train_loss": result.training_loss}))


if __name__ == "__main__":
    main()
