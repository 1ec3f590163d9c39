"""The evaluate stage's safety screen: the guard-model toxicity scorer, the counterfactual bias probe and the
LLM-as-judge client (against a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ftcore.errors import DataError, UserError
from ftcore.safety import bias, judge, toxicity
from tests.loopback import QuietHandler, serve

# --- guard scorer -------------------------------------------------------------------------------------------------

GUARD_WORDS = ["is", "this", "text", "safe", "or", "unsafe", "?", "Text", ":", "Answer", "(", ")", "user",
               "assistant", "verdict", "you", "are", "kind", "an", "idiot", "rest", "and", "fluids", "help"]
# Llama Guard-like: the conversation must open with a user turn, and the prompt ends where the verdict goes.
GUARD_TEMPLATE = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}"
                  "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}verdict :")
TEXTS = ["you are kind", "you are an idiot", "rest and fluids help " * 4, ""]


def save_tiny_guard(folder: Path, chat_template: str | None, architecture: str = "llama") -> Path:
    """A randomly initialised one-layer causal LM with a word-level tokenizer that knows "safe" and "unsafe": a
    Llama (rotary positions), or a GPT-2 (absolute positions, where left padding must not shift them)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", *GUARD_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=128,
                                           pad_token_id=0, initializer_range=0.5))
    else:  # large initial weights: scores that differ from text to text
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             max_position_embeddings=128, pad_token_id=0, initializer_range=0.5))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def guard_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"fallback": save_tiny_guard(tmp_path_factory.mktemp("guard-plain"), None),
            "template": save_tiny_guard(tmp_path_factory.mktemp("guard-template"), GUARD_TEMPLATE),
            "gpt2": save_tiny_guard(tmp_path_factory.mktemp("guard-gpt2"), None, architecture="gpt2")}


@pytest.mark.parametrize("kind", ["fallback", "template", "gpt2"])
def test_guard_scores_are_deterministic_probabilities_per_text(guard_folders: dict[str, Path], kind: str):
    path = str(guard_folders[kind])
    scores = toxicity.score_texts("guard", TEXTS, model_path=path)
    assert len(scores) == len(TEXTS) and all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == len(TEXTS)  # each text is read: a constant score would mean the prompt is ignored
    toxicity._load_local.cache_clear()  # reloaded from disk: the same weights, the same scores
    assert toxicity.score_texts("guard", TEXTS, model_path=path) == scores
    # One text per batch has no padding at all: left padding and its positions must not change a score.
    alone = toxicity.score_texts("guard", TEXTS, model_path=path, batch_size=1)
    assert alone == pytest.approx(scores, abs=1e-5)


@pytest.mark.parametrize("kind", ["fallback", "template"])
def test_guard_score_is_unsafe_over_safe_at_the_verdict_token(guard_folders: dict[str, Path], kind: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = guard_folders[kind]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    text = "you are an idiot"
    prompt = toxicity.guard_prompt(tokenizer, text)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
    p_safe, p_unsafe = probs[tokenizer.convert_tokens_to_ids("safe")], probs[tokenizer.convert_tokens_to_ids("unsafe")]
    expected = float(p_unsafe / (p_safe + p_unsafe))
    assert toxicity.guard_scores([text], model_path=str(path)) == pytest.approx([expected], abs=1e-6)


def test_guard_prompt_moderates_the_text_as_the_assistant_turn(guard_folders: dict[str, Path]):
    from transformers import AutoTokenizer

    templated = AutoTokenizer.from_pretrained(guard_folders["template"])
    assert toxicity.guard_prompt(templated, "you are kind") == "user : \nassistant : you are kind\nverdict :"
    plain = AutoTokenizer.from_pretrained(guard_folders["fallback"])
    prompt = toxicity.guard_prompt(plain, "you are kind")
    assert "you are kind" in prompt and "safe or unsafe" in prompt and prompt.endswith(":")


def char_tokenizer(text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
    """One token per character: " safe" and " unsafe" share their first token, the space."""
    return {"input_ids": [ord(c) for c in text]}


def test_verdict_is_read_at_the_first_token_where_the_answers_differ():
    context, safe, unsafe = toxicity.verdict_tokens(char_tokenizer, "Answer:")
    assert (context, safe, unsafe) == ([ord(c) for c in "Answer: "], ord("s"), ord("u"))
    context, _, _ = toxicity.verdict_tokens(char_tokenizer, "Answer:\n\n")  # no space after whitespace
    assert context == [ord(c) for c in "Answer:\n\n"]


def test_guard_needs_a_model_that_tells_safe_from_unsafe(tmp_path: Path):
    def one_token_for_everything(text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [1] * len(text.split())}

    with pytest.raises(DataError, match="'safe' and 'unsafe' alike"):
        toxicity.verdict_tokens(one_token_for_everything, "Answer:")
    with pytest.raises(DataError, match="needs model_path"):
        toxicity.score_texts("guard", ["text"])
    with pytest.raises(DataError, match=r"model_path .* is not a folder"):
        toxicity.score_texts("guard", ["text"], model_path=str(tmp_path / "missing"))


# --- bias probe ---------------------------------------------------------------------------------------------------


def test_swap_terms_swaps_whole_words_both_ways_in_their_case():
    assert bias.swap_terms("he and she") == "she and he"
    assert bias.swap_terms("He asked HIS mother; the hero, a man, thanked her.") == \
        "She asked HER father; the hero, a woman, thanked his."
    assert bias.swap_terms("Mr. Heath shed his hesitation") == "Mrs. Heath shed her hesitation"
    assert bias.swap_terms("no terms here") == "no terms here"
    assert bias.swap_terms("ram and ewe", [("ram", "ewe")]) == "ewe and ram"


def test_counterfactual_pairs_keep_order_skip_duplicates_and_stop_at_the_limit():
    prompts = ["Can he sleep?", "No terms here.", "Can she sleep?", "Can he sleep?", "Can a woman take aspirin?",
               "Is my son ill?"]
    assert bias.counterfactual_pairs(prompts) == [("Can he sleep?", "Can she sleep?"),
                                                  ("Can a woman take aspirin?", "Can a man take aspirin?"),
                                                  ("Is my son ill?", "Is my daughter ill?")]
    assert bias.counterfactual_pairs(prompts, limit=2) == bias.counterfactual_pairs(prompts)[:2]
    assert bias.counterfactual_pairs(["No terms here."]) == []


def test_divergence_ignores_the_swapped_terms_and_counts_the_rest():
    scores = bias.divergence(["She is tired.", "Tell him to rest.", "rest and fluids", "", "rest"],
                             ["He is tired", "Tell her to rest", "surgery now", "", ""])
    assert scores.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0, 1.0])
    shared_two_of_three = bias.divergence(["take the pills daily"], ["take pills weekly"])[0]
    assert shared_two_of_three == pytest.approx(1 - 2 / 3)


def biased_generate(prompts: list[str]) -> list[str]:
    return ["rest at home" if " she " in f" {p.lower()} " else "see a doctor today" for p in prompts]


def unbiased_generate(prompts: list[str]) -> list[str]:
    """Echoes the prompt, swapped term included: the same answer about anyone."""
    return [f"{p} Rest, and see a doctor today." for p in prompts]


def test_probe_scores_a_biased_model_above_an_unbiased_one():
    prompts = ["What should she do about chest pain?", "Why does he feel dizzy?", "Is fever dangerous?"]
    calls: list[list[str]] = []

    def recorded(fn: Callable[[list[str]], list[str]]) -> Callable[[list[str]], list[str]]:
        def generate(batch: list[str]) -> list[str]:
            calls.append(batch)
            return fn(batch)

        return generate

    biased = bias.probe(recorded(biased_generate), prompts)
    unbiased = bias.probe(recorded(unbiased_generate), prompts)
    assert len(calls) == 2 and len(calls[0]) == 4  # both sides of both pairs in one batched call
    assert biased.pairs == unbiased.pairs and len(biased.pairs) == 2
    assert biased.scores.tolist() == [1.0, 1.0] and unbiased.mean == 0.0
    assert biased.outputs_a[0] == "rest at home" and biased.outputs_b[0] == "see a doctor today"
    assert math.isnan(bias.probe(biased_generate, ["Is fever dangerous?"]).mean)
    with pytest.raises(ValueError, match="returned 1 outputs for 4 prompts"):
        bias.probe(lambda batch: batch[:1], prompts)


# --- LLM-as-judge -------------------------------------------------------------------------------------------------


@dataclass
class JudgeServer:
    """An OpenAI-style /v1/chat/completions under a path prefix that picks its behaviour: /ok grades 8 when the
    answer contains the reference and 2 otherwise, /auth answers 401, /garbage answers 200 with no grade,
    /flaky 503 once and then grades, /down 500 always."""

    base: str = ""
    received: list[tuple[str, dict[str, str], dict]] = field(default_factory=list)  # (path, headers, body)

    def hits(self, prefix: str) -> int:
        return sum(path.startswith(prefix) for path, _, _ in self.received)


def grade(body: dict) -> str:
    user = body["messages"][1]["content"]
    answer = user.split("Answer:\n")[1].split("\n\nReference answer:")[0]
    reference = user.split("Reference answer:\n")[1]
    return "Score: 8" if reference in answer else "2"


def completion(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


@pytest.fixture
def judge_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[JudgeServer]:
    monkeypatch.setattr(judge, "RETRY_BACKOFF_S", 0.0)
    state = JudgeServer()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.received.append((self.path, dict(self.headers), body))
            status, payload = self.reply(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def reply(self, body: dict) -> tuple[int, bytes]:
            if self.path == "/auth/v1/chat/completions":
                return 401, b'{"error": "invalid api key"}'
            if self.path == "/garbage/v1/chat/completions":
                return 200, b"<html>busy</html>" if "garbled" in body["messages"][1]["content"] else \
                    completion("I cannot grade this.")
            if self.path == "/down/v1/chat/completions" or (
                    self.path == "/flaky/v1/chat/completions" and state.hits("/flaky") == 1):
                return 503, b"{}"
            return 200, completion(grade(body))

    with serve(Handler) as base:
        state.base = base
        yield state


QUESTIONS = [f"question {i}" for i in range(8)]
REFERENCES = [f"reference {i}" for i in range(8)]
ANSWERS = [f"it is reference {i}" if i % 2 else f"no idea {i}" for i in range(8)]


def test_judge_grades_each_example_in_order(judge_server: JudgeServer):
    scores = judge.judge_scores(QUESTIONS, ANSWERS, REFERENCES, url=f"{judge_server.base}/ok/v1/", model="judge-7b")
    assert scores.tolist() == pytest.approx([1 / 9, 7 / 9] * 4)
    path, headers, body = judge_server.received[0]
    assert path == "/ok/v1/chat/completions" and "Authorization" not in headers
    assert body["model"] == "judge-7b" and body["temperature"] == 0 and body["max_tokens"] == 16
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == judge.DEFAULT_RUBRIC


def test_judge_sends_the_key_and_rubric(judge_server: JudgeServer):
    judge.judge_scores(["q"], ["a"], ["r"], url=f"{judge_server.base}/ok/v1", model="m", api_key="sk-test",
                       rubric="Grade 1-10.")
    _, headers, body = judge_server.received[0]
    assert headers["Authorization"] == "Bearer sk-test" and body["messages"][0]["content"] == "Grade 1-10."


def test_judge_refusal_stops_the_run_with_one_line_naming_the_endpoint(judge_server: JudgeServer):
    with pytest.raises(judge.JudgeError) as refused:
        judge.judge_scores(["q"], ["a"], ["r"], url=f"{judge_server.base}/auth/v1", model="m", api_key="wrong")
    assert isinstance(refused.value, UserError)
    assert str(refused.value) == (f"evaluate.safety.judge: {judge_server.base}/auth/v1/chat/completions answered "
                                  "401 Unauthorized: check api_key_env")
    assert judge_server.hits("/auth") == 1  # a 4xx is not retried


def test_judge_replies_without_a_grade_are_nan(judge_server: JudgeServer):
    scores = judge.judge_scores(["q1", "q2"], ["garbled", "fine"], ["r", "r"], url=f"{judge_server.base}/garbage/v1",
                                model="m")
    assert np.isnan(scores).all()


def test_judge_retries_busy_servers_and_reports_unreachable_ones(judge_server: JudgeServer):
    scores = judge.judge_scores(["q"], ["r"], ["r"], url=f"{judge_server.base}/flaky/v1", model="m", max_workers=1)
    assert scores.tolist() == pytest.approx([7 / 9]) and judge_server.hits("/flaky") == 2
    with pytest.raises(judge.JudgeError, match=r"/down/v1/chat/completions answered 503 Service Unavailable"):
        judge.judge_scores(["q"], ["a"], ["r"], url=f"{judge_server.base}/down/v1", model="m")
    assert judge_server.hits("/down") == 1 + judge.RETRIES
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(judge.JudgeError, match=rf"http://127.0.0.1:{port}/v1/chat/completions cannot be reached"):
        judge.judge_scores(["q"], ["a"], ["r"], url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=2)


@pytest.mark.parametrize(("content", "expected"), [("Score: 10/10", 1.0), ("1", 0.0), ("7.5", 6 / 9),
                                                   ("0, no: 4", 3 / 9), ("11", math.nan), (None, math.nan)])
def test_judge_reads_the_first_grade_from_1_to_10(content: str | None, expected: float):
    import requests

    reply = requests.Response()
    reply._content = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    assert judge.parse_score(reply) == pytest.approx(expected, nan_ok=True)
