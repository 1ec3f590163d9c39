"""Tiny datasets and recipes for each objective (`task`), written into a test's folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ABBREVIATIONS = {
    "MI": "myocardial infarction", "BP": "blood pressure", "HR": "heart rate", "CHF": "congestive heart failure",
    "DM": "diabetes mellitus", "CKD": "chronic kidney disease", "UTI": "urinary tract infection",
    "GI": "gastrointestinal", "ECG": "electrocardiogram", "CT": "computed tomography", "ICU": "intensive care unit",
    "PRN": "as needed", "BID": "twice a day", "SOB": "shortness of breath", "PO": "by mouth",
}
SPAM = ["WIN a free prize now, call {n}", "URGENT! You have won {n} pounds, text CLAIM", "Free entry: reply WIN {n}"]
HAM = ["see you at lunch at {n}", "can you pick up milk, {n} is fine", "ok I will call you at {n}",
       "running late, there by {n}", "thanks for today, talk at {n}"]
TINY_MODEL = {"source": "scratch", "scratch": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                                "num_attention_heads": 2, "vocab_size": 400}}


def qa_rows() -> list[dict]:
    return [{"question": f"What does {a} mean?", "answer": m} for a, m in ABBREVIATIONS.items()] * 3


def chat_rows() -> list[dict]:
    items = list(ABBREVIATIONS.items())
    return [{"messages": [{"role": "system", "content": "You expand clinical abbreviations."},
                          {"role": "user", "content": f"What does {a} mean?"},
                          {"role": "assistant", "content": m},
                          {"role": "user", "content": f"And {b}?"},
                          {"role": "assistant", "content": n}]}
            for (a, m), (b, n) in zip(items, items[1:] + items[:1], strict=True)] * 3


def text_rows() -> list[dict]:
    return [{"text": f"The abbreviation {a} stands for {m}. Clinicians write {a} in notes when they mean {m}."}
            for a, m in ABBREVIATIONS.items()] * 3


def sms_rows() -> list[dict]:
    return ([{"label": "spam", "text": t.format(n=n)} for t in SPAM for n in range(8)]
            + [{"label": "ham", "text": t.format(n=n)} for t in HAM for n in range(12)])


def preference_rows() -> list[dict]:
    """Each question with its expansion preferred to an evasive answer."""
    return [{"question": f"What does {a} mean?", "good": m, "bad": "I am not sure what that is."}
            for a, m in ABBREVIATIONS.items()] * 3


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe_file(root: Path, body: dict) -> Path:
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "objective", "model": TINY_MODEL, **body}))
    return path


def objective_recipe(root: Path, task: str) -> dict:
    """The recipe of one objective on data written into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    if task == "sft":
        source = {"type": "jsonl", "path": str(write_jsonl(root / "qa.jsonl", qa_rows())),
                  "columns": {"prompt": "question", "completion": "answer"}}
        return {"task": "sft", "data": {"sources": [source]}}
    if task == "sft_messages":
        source = {"type": "jsonl", "path": str(write_jsonl(root / "chats.jsonl", chat_rows()))}
        return {"task": "sft", "data": {"sources": [source], "format": "messages"}}
    if task == "dapt":
        source = {"type": "jsonl", "path": str(write_jsonl(root / "notes.jsonl", text_rows()))}
        return {"task": "dapt", "data": {"sources": [source], "format": "text"}, "train": {"packing": True}}
    if task == "classification":
        source = {"type": "jsonl", "path": str(write_jsonl(root / "sms.jsonl", sms_rows()))}
        return {"task": "classification", "data": {"sources": [source], "format": "text_label"},
                "balance": {"strategy": "class_weights"}}
    if task == "multitask":
        qa = {"type": "jsonl", "path": str(write_jsonl(root / "qa.jsonl", qa_rows())), "task": "expand",
              "columns": {"prompt": "question", "completion": "answer"}}
        sms = {"type": "jsonl", "path": str(write_jsonl(root / "sms.jsonl", sms_rows())), "task": "spam",
               "columns": {"prompt": "text", "completion": "label"}}
        tasks = {"expand": {"weight": 2.0},
                 "spam": {"weight": 1.0, "prompt_template": "Is this message spam or ham? {prompt}\nLabel:"}}
        return {"task": "multitask", "data": {"sources": [qa, sms], "tasks": tasks}}
    if task in ("dpo", "reward_model"):
        source = {"type": "jsonl", "path": str(write_jsonl(root / "pairs.jsonl", preference_rows())),
                  "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}}
        return {"task": task, "data": {"sources": [source], "format": "preference"}}
    if task == "rl":
        source = {"type": "jsonl", "path": str(write_jsonl(root / "qa.jsonl", qa_rows())),
                  "columns": {"prompt": "question", "completion": "answer"}}
        return {"task": "rl", "data": {"sources": [source]},
                # Graded on any output, so a random policy already gets different rewards for its samples to learn
                # from; the reference overlap adds the task's own signal.
                "reward": {"functions": [{"function": "length", "target_words": 2},
                                         {"function": "reference_f1", "weight": 0.5}]}}
    raise ValueError(task)
