"""A loaded model answering batches: completions for causal LMs (a chat is first written the way the model's
training prompts were, ftcore/models/prompting.py), labels with class probabilities for classifiers. The batcher
hands it requests that arrived together; one `model.generate` call answers all those that sample the same way.

A vision-language model keeps its processor beside it: a chat is written with the processor's chat template, and
the processor turns the prompt and its images into image tokens and pixel values, for counting as for generating."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ftcore.models.generate import stop_token_ids
from ftcore.models.load import load_trained, render_chat
from ftcore.models.peft_methods import is_classifier
from ftcore.models.prompting import ChatRefused, Prompting, read_prompting
from ftcore.serving.images import Picture, content_text, template_messages

Kind = Literal["causal", "classifier"]
# Temperatures below this are greedy: dividing the logits by one (1e-300, say) overflows them into infinities, and
# sampling from NaN probabilities fails; what such a temperature asks for is the most likely token anyway.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Completion:
    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    images: tuple[Picture, ...] = ()  # in the order of the prompt's image tokens
    seed: int | None = None  # a sampled answer's random seed
    min_tokens: int = 0  # vLLM's extension: no stop token before this many tokens
    ignore_eos: bool = False  # vLLM's extension: stop tokens do not end the answer (answers of max_new_tokens)
    adapter: str | None = None  # the PEFT name of the adapter that answers (ftcore/serving/adapters.py); None: the base

    def cache_fields(self) -> dict:
        """What shapes the answer, as JSON for the response cache's key: the images by their digests."""
        return {**vars(self), "images": [p.digest for p in self.images]}

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def sampling(self) -> tuple[float, float, int | None, int, bool]:
        """Requests generated in one call must sample and stop alike; greedy ones ignore top_p and the seed."""
        chance = (0.0, 1.0, None) if self.greedy else (self.temperature, self.top_p, self.seed)
        return (*chance, self.min_tokens, self.ignore_eos)


@dataclass
class Completed:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: Literal["stop", "length"]


@dataclass
class Classified:
    label: str
    scores: dict[str, float]
    tokens_in: int


@dataclass
class Engine:
    """One model version in memory. `name` and `version` label responses, metrics and the request log; `variant`
    tells the registered model from its exports; `prompting` is how its training data presented prompts."""

    name: str
    version: str
    model: object
    tokenizer: object
    kind: Kind
    max_context: int
    prompting: Prompting
    device: str = "cpu"
    variant: str = "model"
    labels: list[str] = field(default_factory=list)
    processor: object = None  # a vision-language model's (image processor, `tokenizer`, chat template); else None
    # The checking thread checks requests (counting tokens, rendering chats) while the model thread tokenizes a
    # padded batch. A fast tokenizer keeps its padding setting in shared state, so one tokenizer used by both threads
    # sometimes hands the model an unpadded batch: the checking thread gets its own copy (of the processor, which
    # holds the tokenizer, for a vision-language model).
    checker: object = None
    stop_ids: list[int] = field(default_factory=list)  # EOS and the end-of-turn tokens (`stop_token_ids`)
    folder: Path | None = None  # the model folder it was loaded from (a registered version's fetched copy)
    # Wrapped in PEFT with adapters attached by name (ftcore/serving/adapters.py): every row of a decode batch names
    # its adapter, the base's rows PEFT's "__base__".
    routes_adapters: bool = False

    def __post_init__(self) -> None:
        if self.checker is None:
            self.checker = copy.deepcopy(self.tokenizer if self.processor is None else self.processor)
        if not self.stop_ids:
            self.stop_ids = stop_token_ids(self.model, self.tokenizer)

    @property
    def sees_images(self) -> bool:
        return self.processor is not None

    @property
    def decodes_continuously(self) -> bool:
        """Whether its text completions can join a running decode batch (ftcore/serving/decoding.py): a causal
        model whose layers all keep a full cache (a sliding window's, or a recurrent layer's state, cannot be
        left-padded and joined)."""
        from ftcore.serving.kv_cache import keeps_full_cache

        return self.kind == "causal" and keeps_full_cache(self.model.config)

    def count_tokens(self, text: str, images: Sequence[Picture] = ()) -> int:
        """The text's tokens as the model reads them, each image expanded into its image tokens. A processor
        refuses (ValueError) a prompt whose image tokens and images differ in number."""
        if not self.sees_images:
            return len(self.checker(text, add_special_tokens=self.kind == "classifier")["input_ids"])
        pixels = [[p.image for p in images]] if images else None
        return len(self.checker(images=pixels, text=[text], add_special_tokens=False)["input_ids"][0])

    def render_chat(self, messages: list[dict], prompting: Prompting | None = None) -> str:
        """The chat as the model's training prompts were written (or those of the adapter answering it: `prompting`);
        ChatRefused when it never saw one like it. Content given as parts keeps its image parts for a vision-language
        model; a text model reads the text parts joined (the app refuses image parts for it before)."""
        if self.sees_images:
            if self.checker.chat_template is None:
                raise ChatRefused("its processor has no chat template to write a chat with: POST /v1/completions "
                                  "with the prompt as the model expects it")
            return render_chat(self.checker, template_messages(messages), generation_prompt=True)
        texts = [{**m, "content": content_text(m["content"])} for m in messages]
        return (prompting or self.prompting).chat_prompt(self.checker, texts)

    def complete(self, requests: list[Completion]) -> list[Completed]:
        """Answers in the order asked; requests that sample alike share one generate call, those with images apart
        from those without (a processor takes images for every prompt of a batch or for none)."""
        groups: dict[tuple[tuple, bool], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[r.sampling, bool(r.images)].append(i)
        results: list[Completed | None] = [None] * len(requests)
        for _, indices in groups.items():
            answers = self._generate([requests[i] for i in indices])
            for i, answer in zip(indices, answers, strict=True):
                results[i] = answer
        return results  # type: ignore[return-value]

    def classify(self, texts: list[str]) -> list[Classified]:
        import torch

        batch = self.tokenizer(texts, truncation=True, max_length=self.max_context, padding=True,
                               return_tensors="pt").to(self.device)
        with torch.inference_mode():
            probs = self.model(**batch).logits.float().softmax(-1).cpu()
        lengths = batch["attention_mask"].sum(-1).tolist()
        return [Classified(label=self.labels[int(p.argmax())],
                           scores={name: round(float(v), 6) for name, v in zip(self.labels, p, strict=True)},
                           tokens_in=int(n))
                for p, n in zip(probs, lengths, strict=True)]

    def _generate(self, requests: list[Completion]) -> list[Completed]:
        """One generate call for requests that sample and stop alike (`Completion.sampling`)."""
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only models continue from the right edge
        enc = self._encode(requests)
        temperature, top_p, seed, min_tokens, ignore_eos = requests[0].sampling
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature else \
            {"do_sample": False}
        if seed is not None:
            torch.manual_seed(seed)  # the model thread is the only one sampling
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max(r.max_new_tokens for r in requests),
                                      min_new_tokens=min_tokens or None, pad_token_id=tok.pad_token_id,
                                      eos_token_id=self._ends(ignore_eos), **sampling)
        new_tokens = out[:, enc["input_ids"].shape[1]:].cpu().tolist()
        prompt_lengths = enc["attention_mask"].sum(-1).tolist()
        return [self._finish(r, tokens, int(n)) for r, tokens, n in zip(requests, new_tokens, prompt_lengths,
                                                                          strict=True)]

    def _encode(self, requests: list[Completion]):
        """The batch's ids (and with images their pixel values, in the model's dtype), padded on the left."""
        prompts = [r.prompt for r in requests]
        if not requests[0].images:
            return self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        images = [[p.image for p in r.images] for r in requests]
        return self.processor(images=images, text=prompts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(self.device, dtype=self.model.dtype)

    def _ends(self, ignore_eos: bool) -> list[int]:
        """The tokens that end an answer: EOS and the end-of-turn tokens (`stop_token_ids`); with ignore_eos, an id
        no vocabulary has, so that generate stops at max_new_tokens only."""
        return [-1] if ignore_eos else self.stop_ids

    def _finish(self, request: Completion, tokens: list[int], tokens_in: int) -> Completed:
        """One answer cut to its own max_new_tokens (the batch generated up to the largest), at its first stop token
        (EOS or an end-of-turn token: `stop_token_ids`), and before its first stop string."""
        tokens = tokens[:request.max_new_tokens]
        if ends := [i for i, token in enumerate(tokens) if token in self._ends(request.ignore_eos)][:1]:
            tokens_out, tokens, reason = ends[0] + 1, tokens[:ends[0]], "stop"
        else:
            tokens_out, reason = len(tokens), "length"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = [text.index(s) for s in request.stop if s and s in text]
        if cut:
            text, reason = text[:min(cut)], "stop"
        return Completed(text=text, tokens_in=tokens_in, tokens_out=tokens_out, finish_reason=reason)


def load_engine(folder: Path, name: str, version: str, device: str = "cpu", dtype: str = "float32") -> Engine:
    """The model folder written by ftflow (any method, a classifier too, a vision-language model), ready to
    answer."""
    model, processing = load_trained(folder)
    engine = engine_for(model, processing, name, version, read_prompting(folder, processing), device, dtype=dtype)
    engine.folder = folder
    return engine


def engine_for(model, processing, name: str, version: str, prompting: Prompting, device: str = "cpu",
               variant: str = "model", dtype: str = "float32") -> Engine:
    """`processing`: the model's tokenizer, or a vision-language model's processor (what `load_trained` gives)."""
    processor = processing if hasattr(processing, "image_processor") else None
    tokenizer = processing if processor is None else processor.tokenizer
    if processor is not None:
        # A vision-language model learnt chats through its processor's template, whatever its prompting.json says
        # (an image_text dataset records none of the text formats).
        prompting = Prompting(format="messages")
    import torch

    # float32 is how ftflow writes weights: left as loaded. Casting moves floating-point tensors only.
    model = (model.to(device) if dtype == "float32" else model.to(device=device, dtype=getattr(torch, dtype))).eval()
    classifier = is_classifier(model)
    config = getattr(model, "config", None)
    # A vision-language model's context is its language model's (text_config); a text model's config is its own.
    text_config = config.get_text_config() if config is not None else None
    max_context = int(getattr(text_config, "max_position_embeddings", 0) or tokenizer.model_max_length or 2048)
    labels = [config.id2label[i] for i in range(len(config.id2label))] if classifier else []
    return Engine(name=name, version=version, model=model, tokenizer=tokenizer,
                  kind="classifier" if classifier else "causal", max_context=max_context, prompting=prompting,
                  device=device, variant=variant, labels=labels, processor=processor)
