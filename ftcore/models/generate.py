"""Batched greedy generation and completion-token likelihood for causal LMs."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS and every stop token of the model's generation config
    (a real folder lists its chat template's end-of-turn tokens there: Llama 3's `<|eot_id|>`, Qwen's
    `<|im_end|>`, ...). Passing only the EOS would override that list and run past the end of each turn."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in (tokenizer.eos_token_id, *configured) if i is not None))


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             progress: Callable[[int], object] | None = None) -> list[str]:
    """Greedy completions for each prompt (decoded, special tokens removed); `progress(n)` after each batch of n."""
    import torch

    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    outputs: list[str] = []
    model.eval()
    for batch in _batches(prompts, batch_size):
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop_token_ids(model, tokenizer),
            )
        outputs.extend(tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        if progress is not None:
            progress(len(batch))
    return outputs


def completion_nlls(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int,
                    progress: Callable[[int], object] | None = None) -> list[tuple[float, int]]:
    """Per example: the negative log-likelihood of its completion tokens (EOS included) given its prompt, summed,
    and their count; `progress(n)` after each batch of n."""
    import torch

    results: list[tuple[float, int]] = []
    model.eval()
    for input_ids, attention, label_ids in completion_batches(tokenizer, prompts, completions, batch_size):
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device),
                           attention_mask=attention.to(model.device)).logits[:, :-1].float().cpu()
        target = label_ids[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        results.extend(zip(nll.sum(dim=1).tolist(), (target != -100).sum(dim=1).tolist(), strict=True))
        if progress is not None:
            progress(len(target))
    return results


def completion_batches(tokenizer, prompts: list[str], completions: list[str], batch_size: int) -> Iterator[tuple]:
    """(input_ids, attention_mask, labels) tensors of prompt + completion + EOS, right-padded, with the labels
    -100 on the prompt and the padding: the loss falls on the completion only."""
    import torch

    for pairs in _batches(list(zip(prompts, completions, strict=True)), batch_size):
        ids, labels = [], []
        for prompt, completion in pairs:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids.append(p + c)
            labels.append([-100] * len(p) + c)
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        label_ids = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        attention = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in ids])[:, None]).long()
        yield input_ids, attention, label_ids


def generate_with_images(model, processor, chats: list[list[dict]], images: list[list], max_new_tokens: int,
                         batch_size: int, progress: Callable[[int], object] | None = None) -> list[str]:
    """Greedy answers of a vision-language model to chats (content parts, images as `{"type": "image"}`) with their
    images (PIL images, in order); `progress(n)` after each batch of n. Rows without images go in batches of their
    own: a processor takes a batch with images for every row or for none."""
    import torch

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
    answers: dict[int, str] = {}
    model.eval()
    for with_images in (True, False):
        rows = [i for i in range(len(chats)) if bool(images[i]) == with_images]
        for batch in _batches(rows, batch_size):
            encoded = processor(images=[images[i] for i in batch] if with_images else None,
                                text=[texts[i] for i in batch], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(model.device, dtype=model.dtype)
            with torch.no_grad():
                out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(model, tokenizer))
            decoded = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
            answers.update(zip(batch, decoded, strict=True))
            if progress is not None:
                progress(len(batch))
    return [answers[i] for i in range(len(chats))]
