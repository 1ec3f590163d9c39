"""Images through the data stages and a vision-language model: sources whose rows carry images (paths, base64, data
URLs, Hugging Face Image columns, chats with image parts or `<image>` placeholders) into the content-addressed store;
splits by group; scratch LLaVA and Idefics3 models that learn to read the picture."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from ftcore.columns import IMAGE_PLACEHOLDER
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import DataConfig
from ftcore.errors import DataError, UserError
from ftcore.evaluation.evaluate import evaluate_models
from ftcore.evaluation.scorers import Scoring
from ftcore.jobs import clean_job
from ftcore.models.init import InitJob, init_stage
from ftcore.recipe import Recipe
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.ftcore.image_fixtures import draw, write_shapes


def png(colour: str = "red", shape: str = "circle") -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    draw(colour, shape).save(buffer, format="PNG")
    return buffer.getvalue()


def collect(tmp_path: Path, rows: list[dict], **source) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = DataConfig.model_validate({"format": "image_text", "sources": [{"type": "jsonl", "path": str(data),
                                                                          **source}]})
    out = collect_stage(CollectJob(data=cfg, sources={}), tmp_path / "collected")
    assert out.metrics["rows_in"] == out.metrics["rows_kept"] + out.metrics["rows_quarantined"]
    return (pd.read_parquet(out.path / "collected.parquet"), pd.read_parquet(out.path / "quarantine.parquet"),
            out.path / "images")


def test_every_form_of_image_a_row_brings_is_stored_once_by_its_content(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png())
    encoded = base64.b64encode(png("blue")).decode()
    rows = [
        {"image": "pics/a.png", "prompt": "What is this?", "completion": "a red circle"},  # relative to the file
        {"image": f"data:image/png;base64,{encoded}", "prompt": "<image> Colour?", "completion": "blue"},
        {"image": encoded, "prompt": "Colour?", "completion": "blue"},  # bare base64: the same picture again
        {"image": ["pics/a.png", "pics/a.png"], "prompt": "<image> and <image>: same?", "completion": "yes"},
    ]
    kept, quarantined, store = collect(tmp_path, rows, columns={"images": "image"})
    assert len(kept) == 4 and quarantined.empty
    names = [json.loads(cell) for cell in kept["images"]]
    red, blue = (f"{hashlib.sha256(png(c)).hexdigest()}.png" for c in ("red", "blue"))
    assert names == [[red], [blue], [blue], [red, red]]
    assert sorted(p.name for p in store.iterdir()) == sorted({red, blue})  # one file per distinct picture
    chats = [json.loads(cell) for cell in kept["messages"]]
    # Without a placeholder the image goes before the prompt; placeholders stay where they were written.
    assert chats[0] == [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}What is this?"},
                        {"role": "assistant", "content": "a red circle"}]
    assert chats[1][0]["content"] == f"{IMAGE_PLACEHOLDER} Colour?"
    assert chats[3][0]["content"] == f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}: same?"


def test_chats_with_image_parts_and_a_fixed_prompt_for_captions(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]
    kept, _, _ = collect(tmp_path, [{"images": ["a.png"], "messages": parts}])
    assert json.loads(kept["messages"][0])[0]["content"] == f"{IMAGE_PLACEHOLDER}Describe."
    kept, _, _ = collect(tmp_path, [{"picture": "a.png", "caption": "a red circle"}], prompt="Describe the picture.",
                         columns={"images": "picture", "completion": "caption"})
    assert json.loads(kept["messages"][0])[0]["content"] == f"{IMAGE_PLACEHOLDER}Describe the picture."


def test_rows_whose_images_cannot_be_used_are_quarantined_with_the_reason(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    rows = [{"image": "a.png", "prompt": "ok", "completion": "kept"},
            {"image": "missing.png", "prompt": "q", "completion": "a"},
            {"image": "https://example.org/a.png", "prompt": "q", "completion": "a"},
            {"image": "a.png", "prompt": "<image> <image>", "completion": "a"},
            {"image": "data:image/png;base64,@@@", "prompt": "q", "completion": "a"}]
    kept, quarantined, _ = collect(tmp_path, rows, columns={"images": "image"})
    assert len(kept) == 1
    reasons = dict(zip(quarantined["source_row"], quarantined["reason"], strict=True))
    assert "image file not found" in reasons[2] and "missing.png" in reasons[2]
    assert "fetching images is off" in reasons[3] and "fetch_images: true" in reasons[3]
    assert reasons[4] == "messages: 2 image placeholders for 1 image"
    assert "invalid base64" in reasons[5]


def test_a_saved_hugging_face_dataset_with_an_image_column(tmp_path):
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"image": [{"bytes": png("green"), "path": None}], "caption": ["a green circle"]},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "caption": datasets.Value("string")})
                               ).save_to_disk(str(folder))
    cfg = DataConfig.model_validate({"format": "image_text", "sources": [{
        "type": "hf_dataset", "path": str(folder), "prompt": "Describe.",
        "columns": {"images": "image", "completion": "caption"}}]})
    out = collect_stage(CollectJob(data=cfg, sources={}), tmp_path / "collected")
    kept = pd.read_parquet(out.path / "collected.parquet")
    assert json.loads(kept["images"][0]) == [f"{hashlib.sha256(png('green')).hexdigest()}.png"]


def test_image_fields_only_for_the_image_format():
    with pytest.raises(ValueError, match="prompt only for format image_text"):
        DataConfig.model_validate({"sources": [{"type": "jsonl", "path": __file__, "prompt": "x"}]})


def test_a_group_never_spans_two_splits():
    import numpy as np

    from ftcore.data.config import SplitConfig
    from ftcore.data.split import assign_splits

    groups = pd.Series([f"book{i % 23}" for i in range(460)])
    cfg = SplitConfig(validation=0.1, test=0.2, group_by="book", seed=3)
    splits = assign_splits(len(groups), None, np.zeros(len(groups), dtype=bool), cfg, 0.2, groups)
    per_group = pd.DataFrame({"group": groups, "split": splits}).groupby("group")["split"].nunique()
    assert (per_group == 1).all()
    shares = pd.Series(splits).value_counts(normalize=True)
    assert set(shares.index) == {"train", "validation", "test"}
    assert abs(shares["test"] - 0.2) <= 0.05 and abs(shares["validation"] - 0.1) <= 0.05


def shapes_recipe(manifest: Path, architecture: str, model: dict | None = None, method: dict | None = None,
                  **train) -> Recipe:
    """The shapes data on a small scratch model (or `model`, the recipe's model section), fully fine-tuned (or
    `method`) for 60 steps."""
    return Recipe.model_validate({
        "name": "shapes", "objective": "vision_language",
        "data": {"format": "image_text", "split": {"validation": 0.1, "test": 0.25, "seed": 0},
                 "sources": [{"type": "jsonl", "path": str(manifest), "prompt": "What is this?",
                              "columns": {"images": "image", "completion": "caption"}}]},
        "model": model or {"source": "scratch", "scratch": {
            "architecture": architecture, "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256,
            "vision": {"image_size": 32, "patch_size": 8, "max_tiles": 2}}},
        "method": method or {"name": "full"},
        "train": {"max_steps": 60, "batch_size": 8, "learning_rate": 3e-3, "max_length": 128,
                  "lr_scheduler": "constant", "save_steps": 1000, **train},
        "evaluate": {"metrics": ["exact_match", "cer"], "max_new_tokens": 24, "latency_probes": 2,
                     "bootstrap_resamples": 200},
    })


@pytest.mark.parametrize("architecture", ["llava", "idefics3"])
def test_a_scratch_vision_language_model_learns_to_read_the_picture(tmp_path, architecture):
    """The captions name a colour and a shape that only the picture shows: the base model gets none right, the
    trained one most (measured, one thread: llava 0.89, idefics3 1.0 exact match on the 18 test pictures; the
    assertion leaves room for other thread counts)."""
    recipe = shapes_recipe(write_shapes(tmp_path / "data"), architecture)
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    from ftcore.data.clean import clean_balance_stage

    dataset = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec,
                              vision=recipe.train.vision), tmp_path / "init")
    assert {"processor_config.json", "chat_template.jinja"} <= {p.name for p in base.base_path.iterdir()}
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                          tmp_path / "train")
    assert trained.metrics["train_loss_last"] < trained.metrics["train_loss_first"] / 5
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate.model_copy(update={"fewshot": 2}),
                      objective=recipe.spec)
    out = evaluate_models({"base": base.base_path, "candidate": trained.model_path}, scoring, tmp_path / "evaluate")
    metrics = out.metrics
    assert metrics["base.exact_match"] == 0 and metrics["exact_match"] >= 0.6
    assert metrics["cer"] < metrics["base.cer"] - 0.5
    assert metrics["cer.ci_high"] < metrics["base.cer.ci_low"]  # the interval excludes no change
    assert metrics["latency_p50_s"] > 0
    # the base prompted with two training pictures and their captions before each test picture (three images)
    assert metrics["cer"] < metrics["fewshot.cer"] and "fewshot.cer.ci_low" in metrics
    assert pd.read_json(out.predictions_path, lines=True)["fewshot"].notna().all()


def test_few_shot_prompting_puts_training_pictures_and_answers_before_each_question(tmp_path):
    """The same k training rows for every test row, as earlier turns of its chat, their images first in the order
    their parts appear; the processor expands every one of them into image tokens."""
    from ftcore.data.images import with_image_paths
    from ftcore.evaluation.vision import fewshot_questions, image_questions
    from ftcore.models.load import load_processor
    from ftcore.training.vision import prompt_tokens

    _, dataset, base = prepared_shapes(tmp_path)
    train, test = (with_image_paths(pd.read_parquet(dataset.splits[s]), dataset.splits[s]) for s in ("train", "test"))
    questions = image_questions(test)
    shots = fewshot_questions(questions, train, 2)
    assert shots.equals(fewshot_questions(questions, train, 2))  # drawn with a fixed seed
    for (_, plain), (_, shot) in zip(questions.iterrows(), shots.iterrows(), strict=True):
        assert [m["role"] for m in shot["chat"]] == ["user", "assistant", "user", "assistant", "user"]
        assert shot["chat"][-1] == plain["chat"][-1] and shot["images"][-1:] == plain["images"]
        demos = [m for m in shot["chat"][:-1] if m["role"] == "assistant"]
        assert {d["content"][0]["text"] for d in demos} <= {json.loads(c)[-1]["content"] for c in train["messages"]}
    assert shots["chat"].iloc[0][:4] == shots["chat"].iloc[1][:4]
    processor = load_processor(base.base_path)
    one = prompt_tokens(processor, questions["chat"].iloc[0], questions["images"].iloc[0])
    three = prompt_tokens(processor, shots["chat"].iloc[0], shots["images"].iloc[0])
    assert three - one > 2 * 16  # two more pictures of 16 image tokens each (32 pixels in 8-pixel patches)


@pytest.fixture(scope="module")
def llava():
    from ftcore.models.config import ScratchModelConfig
    from ftcore.models.scratch import build_vision_language, train_tokenizer

    cfg = ScratchModelConfig(architecture="llava", vocab_size=128, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2,
                             vision={"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 1, "num_attention_heads": 2})
    model, _ = build_vision_language(cfg, train_tokenizer(["a red circle"], 128, cfg))
    return model


def test_an_adapter_goes_on_the_language_model_and_the_projector_trains_whole(llava):
    import copy

    from ftcore.models.config import LoraMethod, VisionParts
    from ftcore.models.peft_methods import apply_method

    wrapped = apply_method(copy.deepcopy(llava), LoraMethod(r=2), vision=VisionParts())
    trained = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trained and all("language_model" in n or "multi_modal_projector" in n for n in trained)
    assert any("lora_A" in n and "language_model" in n for n in trained)
    assert not any("vision_tower" in n for n in trained)
    with_tower = apply_method(copy.deepcopy(llava), LoraMethod(r=2), vision=VisionParts(vision_tower=True))
    assert any("lora_A" in n and "vision_tower" in n for n, p in with_tower.named_parameters() if p.requires_grad)


def test_full_fine_tuning_freezes_the_parts_train_vision_freezes(llava):
    import copy

    from ftcore.models.config import VisionParts
    from ftcore.models.vision import freeze_parts

    model = copy.deepcopy(llava)
    freeze_parts(model, VisionParts(language_model=False))
    trained = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"multi_modal_projector"}


def test_the_vision_tower_and_the_projector_learn_at_their_own_rates(llava):
    import torch

    from ftcore.models.config import VisionParts
    from ftcore.training.vision import with_part_rates

    optimizer = torch.optim.AdamW([{"params": list(llava.parameters()), "lr": 1e-3, "weight_decay": 0.0}])
    with_part_rates(optimizer, llava, VisionParts(vision_tower=True, vision_tower_lr=1e-5, projector_lr=1e-4))
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    parts = {name: rate[id(p)] for name, p in llava.named_parameters()}
    assert {r for n, r in parts.items() if ".vision_tower." in f".{n}"} == {1e-5}
    assert {r for n, r in parts.items() if "multi_modal_projector" in n} == {1e-4}
    assert {r for n, r in parts.items() if "language_model" in n or "lm_head" in n} == {1e-3}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(llava.parameters()))


def test_validate_refuses_a_model_that_does_not_see_images_or_a_method_that_does_not_fit(tmp_path):
    from ftcore.models.support import check_recipe_model

    recipe = shapes_recipe(write_shapes(tmp_path, copies=1), "llava")
    text_model = recipe.model.model_copy(update={"scratch": recipe.model.scratch.model_copy(
        update={"architecture": "llama"})})
    with pytest.raises(UserError, match="trains on images, and llama reads only text"):
        check_recipe_model(text_model, recipe.method, recipe.spec)
    from pydantic import TypeAdapter

    from ftcore.models.config import MethodConfig
    from ftcore.objectives import OBJECTIVES

    with pytest.raises(UserError, match="llava is a vision-language model, and objective sft trains on text only"):
        check_recipe_model(recipe.model, recipe.method, OBJECTIVES["sft"])
    with pytest.raises(UserError, match="prefix does not fit the scratch llava"):
        check_recipe_model(recipe.model, TypeAdapter(MethodConfig).validate_python({"name": "prefix"}), recipe.spec)


def prepared_shapes(root: Path, architecture: str = "llava", method: dict | None = None, **train):
    """The shapes recipe's data cleaned and its scratch model built under `root`: (recipe, dataset, base)."""
    from ftcore.data.clean import clean_balance_stage

    recipe = shapes_recipe(write_shapes(root / "data", copies=2), architecture, method=method, **train)
    dataset = clean_balance_stage(clean_job(recipe, collect_stage(CollectJob(data=recipe.data, sources={}),
                                                                  root / "collected")), root / "clean")
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec,
                              vision=recipe.train.vision), root / "init")
    return recipe, dataset, base


@pytest.mark.parametrize("method", [{"name": "qlora", "r": 4}, {"name": "dora", "r": 4}], ids=["qlora", "dora"])
def test_qlora_quantises_the_language_model_alone_and_dora_trains_beside_the_projector(tmp_path, method):
    """QLoRA leaves the vision tower, the projector (trained whole beside the adapter) and the output head in full
    precision; both methods train and the trained model answers. Measured, one thread: the loss fell from 5.04 to 2.89
    (qlora) and from 5.01 to 2.79 (dora) in 30 steps."""
    import bitsandbytes as bnb

    from ftcore.models.vision import part_modules
    from ftcore.training.train import load_for_training

    recipe, dataset, base = prepared_shapes(tmp_path, method=method, max_steps=30)
    job = TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec)
    model, _ = load_for_training(job)
    parts = part_modules(model)
    four_bit = {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    assert bool(four_bit) == (method["name"] == "qlora")
    assert all(name.startswith(parts["language_model"] + ".") for name in four_bit)
    if four_bit:  # `ftflow plan` counts the same weights in 4 bits
        from ftcore.planning.shape import model_shape

        assert model_shape(recipe.model).quantizable_params == sum(m.in_features * m.out_features
                                                                   for m in four_bit.values())
    projector = model.get_submodule(parts["projector"])
    assert all(p.requires_grad for p in projector.modules_to_save.parameters())
    trained = train_stage(job, tmp_path / "train")
    assert trained.metrics["train_loss_last"] < 0.7 * trained.metrics["train_loss_first"]
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=recipe.spec)
    out = evaluate_models({"candidate": trained.model_path}, scoring, tmp_path / "evaluate")
    assert pd.read_json(out.predictions_path, lines=True)["candidate"].str.len().gt(0).any()


def test_a_max_length_that_leaves_no_room_after_the_image_tokens_is_refused_with_the_length_that_fits(tmp_path):
    recipe, dataset, base = prepared_shapes(tmp_path, "idefics3", max_length=24)
    with pytest.raises(UserError, match=r"train.max_length: 24 tokens leaves no room for the answer after the "
                                        r"prompt in \d+ of \d+ rows \(prompts up to \d+ tokens\); raise max_length"):
        train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                    tmp_path / "train")
    assert not (tmp_path / "train").exists()


def test_a_local_folder_of_a_vision_language_model_trains_like_a_downloaded_one(tmp_path):
    """A folder as a user downloads one (config.json with a vision_config, safetensors, the processor's and the
    tokenizer's files, the chat template), named by model.source: pretrained: init keeps it in place, the trained
    model carries the processor, and it answers images."""
    import shutil

    _, dataset, scratch = prepared_shapes(tmp_path / "scratch")
    folder = tmp_path / "models" / "tiny-llava"
    shutil.copytree(scratch.base_path, folder)
    recipe = shapes_recipe(write_shapes(tmp_path / "data", copies=2), "llava",
                           model={"source": "pretrained", "name_or_path": str(folder)})
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec,
                              vision=recipe.train.vision), tmp_path / "init")
    assert base.base_path == folder
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                          tmp_path / "train")
    assert (trained.model_path / "processor_config.json").is_file()
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=recipe.spec)
    metrics = evaluate_models({"candidate": trained.model_path}, scoring, tmp_path / "evaluate").metrics
    assert metrics["exact_match"] >= 0.5


def test_rows_without_images_train_and_are_answered_beside_rows_with_them(tmp_path):
    manifest = write_shapes(tmp_path / "data", copies=2)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows += [{"image": [], "caption": f"no picture {k}"} for k in range(12)]  # text-only rows in every batch
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = shapes_recipe(manifest, "llava", max_steps=12, logging_steps=2)
    from ftcore.data.clean import clean_balance_stage

    dataset = clean_balance_stage(clean_job(recipe, collect_stage(CollectJob(data=recipe.data, sources={}),
                                                                  tmp_path / "collected")), tmp_path / "clean")
    assert (pd.read_parquet(dataset.splits["train"])["images"] == "[]").sum() >= 6
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec,
                              vision=recipe.train.vision), tmp_path / "init")
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                          tmp_path / "train")
    assert trained.metrics["train_loss_last"] < trained.metrics["train_loss_first"]
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=recipe.spec)
    out = evaluate_models({"candidate": trained.model_path}, scoring, tmp_path / "evaluate")
    predictions = pd.read_json(out.predictions_path, lines=True)
    assert predictions["candidate"].notna().all() and (predictions["images"].map(len) == 0).any()


def test_a_folder_of_pictures_with_a_captions_file_beside_them(tmp_path):
    """The layout people keep pictures in (Hugging Face's imagefolder: a metadata file naming each picture's file):
    a CSV of file names and captions, the names relative to the CSV's folder."""
    (tmp_path / "pictures").mkdir()
    for colour in ("red", "blue"):
        (tmp_path / "pictures" / f"{colour}.png").write_bytes(png(colour))
    (tmp_path / "pictures" / "captions.csv").write_text("file_name,caption\nred.png,a red circle\n"
                                                        "blue.png,a blue circle\n")
    cfg = DataConfig.model_validate({"format": "image_text", "sources": [{
        "type": "csv", "path": str(tmp_path / "pictures" / "captions.csv"), "prompt": "Describe.",
        "columns": {"images": "file_name", "completion": "caption"}}]})
    out = collect_stage(CollectJob(data=cfg, sources={}), tmp_path / "collected")
    kept = pd.read_parquet(out.path / "collected.parquet")
    assert [json.loads(cell) for cell in kept["images"]] == [[f"{hashlib.sha256(png(c)).hexdigest()}.png"]
                                                             for c in ("red", "blue")]


@pytest.mark.parametrize("method", ["ia3", "adapter"])
def test_methods_that_find_their_layers_by_block_find_the_language_model_s(llava, method):
    """IA3 and bottleneck adapters place themselves in the stack of blocks; a vision-language model's vision tower
    has a stack too (here as deep as the language model's), which is not the one to adapt."""
    import copy

    from pydantic import TypeAdapter

    from ftcore.models.config import MethodConfig, VisionParts
    from ftcore.models.peft_methods import apply_method

    wrapped = apply_method(copy.deepcopy(llava), TypeAdapter(MethodConfig).validate_python({"name": method}),
                           vision=VisionParts())
    adapted = [name for name, p in wrapped.named_parameters() if p.requires_grad and "projector" not in name]
    assert adapted and all("language_model" in name for name in adapted)


def test_image_urls_are_fetched_only_where_the_source_allows_it(tmp_path):
    from tests.loopback import QuietHandler, serve

    picture = png("yellow")

    class Pictures(QuietHandler):
        def do_GET(self):
            found = self.path == "/yellow.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            if found:
                self.wfile.write(picture)

    with serve(Pictures) as base_url:
        rows = [{"image": f"{base_url}/yellow.png", "prompt": "Colour?", "completion": "yellow"},
                {"image": f"{base_url}/missing.png", "prompt": "Colour?", "completion": "none"}]
        with pytest.raises(DataError, match=r"fetching images is off for this source \(set fetch_images: true"):
            collect(tmp_path / "off", rows, columns={"images": "image"})  # no row usable: the run stops, saying why
        kept, quarantined, _ = collect(tmp_path / "on", rows, columns={"images": "image"}, fetch_images=True)
    assert json.loads(kept["images"][0]) == [f"{hashlib.sha256(picture).hexdigest()}.png"]
    assert quarantined["reason"].tolist() == [f"images: image URL {base_url}/missing.png: HTTPError"]
