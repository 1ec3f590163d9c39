"""The built-in image cleaning steps (ftcore/data/steps/images.py) on crafted images, the clean stage on image_text
rows (image steps, pruned store, the data card's thumbnails), the recipe's image defaults, and the default steps on
the real Tux Paint captions."""

from __future__ import annotations

import json
import logging
import re
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from ftcore.columns import IMAGE_PLACEHOLDER
from ftcore.data.clean import clean_balance_stage, run_steps
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import StepSpec
from ftcore.data.images import image_names, put
from ftcore.data.steps import images as image_steps
from ftcore.jobs import clean_job
from ftcore.recipe import IMAGE_TEXT_STEPS, Recipe
from ftcore.registry import Batch

COLUMNS = ["messages"]
GPS = 0x8825


def photo(seed: int, size: tuple[int, int] = (96, 72)):
    """A smooth random picture, photo-like to a perceptual hash. (The shapes of image_fixtures are centred and
    symmetric: half their hash bits sit on zero coefficients and flip when the shape moves a pixel.)"""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)


def encoded(image, fmt: str = "PNG", **options) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def opened(store: Path, name: str):
    from PIL import Image

    image = Image.open(store / name)
    image.load()
    return image


def chat(question: str, answer: str, n_images: int = 1) -> str:
    return json.dumps([{"role": "user", "content": IMAGE_PLACEHOLDER * n_images + question},
                       {"role": "assistant", "content": answer}], ensure_ascii=False)


def image_rows(store: Path, rows: list[tuple[list[bytes | str], str]]) -> pd.DataFrame:
    """Rows naming their images (bytes are put in the store; a str is a file already there) with one placeholder
    each, and a question; the index is the row number."""
    store.mkdir(exist_ok=True)
    return pd.DataFrame({
        "images": [json.dumps([put(store, i) if isinstance(i, bytes) else i for i in images]) for images, _ in rows],
        "messages": [chat(question, "an answer", len(images)) for images, question in rows],
    })


def run(rows: pd.DataFrame, store: Path, step: str, **params):
    kept, quarantine, metrics = run_steps(rows, [StepSpec(step=step, **params)], COLUMNS, images=store)
    assert metrics[f"{step}.rows_in"] == metrics[f"{step}.rows_kept"] + metrics[f"{step}.rows_quarantined"]
    return kept, quarantine


def test_empty_truncated_and_non_images_are_quarantined_with_the_reason(tmp_path):
    from PIL import ImageFile

    store = tmp_path / "images"
    png, jpeg = encoded(photo(0)), encoded(photo(0), "JPEG")
    store.mkdir()
    (store / "empty.png").write_bytes(b"")
    (store / "text.png").write_bytes(b"these are words, not a picture")
    rows = image_rows(store, [([png], "whole"), ([png[: len(png) // 2]], "half a PNG"),
                              ([png[:-12]], "a PNG without its end chunk"), ([jpeg[:-2]], "a JPEG cut short"),
                              (["empty.png"], "empty"), (["text.png"], "text"), ([png, "empty.png"], "second")])
    kept, quarantine = run(rows, store, "drop_undecodable_images")
    assert kept["messages"].map(json.loads).str[0].str["content"].tolist() == [f"{IMAGE_PLACEHOLDER}whole"]
    assert quarantine["reason"].tolist() == [
        "image cannot be decoded: Truncated File Read",
        "image cannot be decoded: truncated PNG file",
        "image cannot be decoded: image file is truncated (19 bytes not processed)",
        "image is empty (0 bytes)",
        "image is not an image in a format PIL reads",
        "image 2 of 2 is empty (0 bytes)",
    ]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # what makes a truncated JPEG fail to load


def test_a_placeholder_count_other_than_the_images_is_quarantined(tmp_path):
    store = tmp_path / "images"
    rows = image_rows(store, [([encoded(photo(0))], "one each"), ([], "no image, no placeholder")])
    picture = rows["images"][0]
    lost = json.dumps([{"role": "user", "content": "the text step removed it"}, {"role": "assistant", "content": "a"}])
    rows.loc[2] = [picture, lost]
    rows.loc[3] = [picture, chat("two for one", "a", n_images=2)]
    kept, quarantine = run(rows, store, "drop_placeholder_mismatch")
    assert len(kept) == 2
    assert quarantine["reason"].tolist() == ["messages: 0 image placeholders for 1 image",
                                             "messages: 2 image placeholders for 1 image"]


def test_oversized_images_are_resized_keeping_their_aspect_ratio_in_their_format(tmp_path):
    from PIL import Image

    store = tmp_path / "images"
    upright = Image.Exif()
    upright[0x0112] = 6  # Orientation: stored on its side, seen 100 wide and 400 high
    wide, large, small = encoded(photo(1, (400, 100))), encoded(photo(2, (300, 200)), "JPEG"), encoded(photo(3))
    tall = encoded(photo(1, (400, 100)), "JPEG", exif=upright)
    rows = image_rows(store, [([wide], "wide"), ([large], "large"), ([tall], "tall"), ([small], "small")])
    kept, quarantine = run(rows, store, "filter_image_size", max_width=200, max_pixels=15_000, action="resize")
    assert quarantine.empty
    names = kept["images"].map(image_names).str[0].tolist()
    assert names[3] == put(store, small)  # within the limits: untouched
    assert [(opened(store, n).size, opened(store, n).format) for n in names[:3]] == [
        ((200, 50), "PNG"), ((150, 100), "JPEG"), ((61, 244), "JPEG")]  # the tall one written upright
    assert (store / put(store, wide)).exists()  # never edited in place: the clean stage prunes what no row names


def test_size_limits_resizing_cannot_meet_quarantine_naming_the_limit(tmp_path):
    store = tmp_path / "images"
    rows = image_rows(store, [([encoded(photo(1, (400, 100)))], "wide"), ([encoded(photo(2, (64, 8)))], "a line"),
                              ([encoded(photo(3, (240, 30)))], "long"), ([encoded(photo(4, (300, 40)))], "thin")])
    _, quarantine = run(rows, store, "filter_image_size", max_width=200, action="quarantine")
    assert quarantine["reason"].tolist() == ["image is 400x100 px: width 400 > max_width 200",
                                             "image is 240x30 px: width 240 > max_width 200",
                                             "image is 300x40 px: width 300 > max_width 200"]
    kept, quarantine = run(rows, store, "filter_image_size", max_width=200, min_height=30, max_aspect_ratio=7.5,
                           action="resize")
    assert kept["messages"].str.contains("wide").tolist() == [True]
    assert quarantine["reason"].tolist() == [
        "image is 64x8 px: height 8 < min_height 30",
        "image is 240x30 px: aspect ratio 8.0 > max_aspect_ratio 7.5",
        "image is 300x40 px, and resized into the maxima 200x26 px: height 26 < min_height 30",
    ]
    with pytest.raises(ValidationError, match="set at least one limit"):
        StepSpec(step="filter_image_size", action="resize")
    with pytest.raises(ValidationError, match="max_width must be at least min_width"):
        StepSpec(step="filter_image_size", min_width=100, max_width=50)


def test_exif_with_a_gps_position_is_stripped_and_the_picture_kept_upright(tmp_path):
    from PIL import Image, ImageCms, PngImagePlugin

    store = tmp_path / "images"
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "PhoneMaker", 6  # Make; Orientation: turned a quarter
    exif.get_ifd(GPS).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 1.0)})
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    picture = photo(4, (80, 60))
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Jane Doe")
    clean = encoded(photo(5))
    rows = image_rows(store, [([encoded(picture, "JPEG", exif=exif, icc_profile=srgb, quality=95)], "phone"),
                              ([encoded(picture, "PNG", pnginfo=text, exif=exif)], "png"), ([clean], "clean")])
    assert opened(store, image_names(rows["images"][0])[0]).getexif().get_ifd(GPS)  # there before

    kept, quarantine = run(rows, store, "strip_image_metadata")
    assert quarantine.empty
    jpeg, png, untouched = (opened(store, n) for n in kept["images"].map(image_names).str[0])
    assert untouched.filename.endswith(put(store, clean))
    for image in (jpeg, png):
        assert not image.getexif() and not image.getexif().get_ifd(GPS) and "Author" not in image.info
        assert image.size == (60, 80)  # the orientation was applied to the pixels before it went
    assert jpeg.format == "JPEG" and jpeg.info["icc_profile"] == srgb and png.format == "PNG"
    upright = np.asarray(picture.transpose(Image.Transpose.ROTATE_270), dtype=int)
    assert np.array_equal(np.asarray(png), upright)  # PNG: exactly the pixels
    assert np.abs(np.asarray(jpeg, dtype=int) - upright).mean() < 3  # JPEG: its own tables, a re-encoding's loss

    kept, _ = run(rows.iloc[:1], store, "strip_image_metadata", keep_icc_profile=False)
    assert "icc_profile" not in opened(store, image_names(kept["images"][0])[0]).info


def test_images_in_other_formats_are_rewritten_as_png_with_the_same_pixels(tmp_path):
    store = tmp_path / "images"
    picture = photo(6, (40, 30)).quantize(16)  # a palette: GIF keeps every pixel of it
    rows = image_rows(store, [([encoded(picture, "GIF", comment=b"made by Jane Doe")], "gif"),
                              ([encoded(picture.convert("RGB"), "BMP")], "bmp")])
    kept, _ = run(rows, store, "strip_image_metadata")
    for name in kept["images"].map(image_names).str[0]:
        image = opened(store, name)
        assert image.format == "PNG" and "comment" not in image.info
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(picture.convert("RGB")))


def test_exact_duplicate_images_keep_the_first_row_across_batches(tmp_path):
    store = tmp_path / "images"
    a, b = encoded(photo(1)), encoded(photo(2))
    rows = image_rows(store, [([a], "What colour is it?"), ([b], "What is it?"), ([a], "How many are there?"),
                              ([a], "What colour is it?"), ([a, b], "Both?"), ([], "no image")])
    state: dict = {}
    params = image_steps.ImageDuplicateParams()
    first = image_steps.drop_duplicate_images(Batch(rows.iloc[:2], COLUMNS, state, store), params)
    rest = image_steps.drop_duplicate_images(Batch(rows.iloc[2:], COLUMNS, state, store), params)  # a later batch
    assert len(first.kept) + len(rest.kept) == 4 and first.quarantined.empty
    assert rest.quarantined["reason"].to_dict() == {2: "duplicate image of row 0", 3: "duplicate image of row 0"}

    # VQA: one picture, several questions. Counting the text, only the repeated question goes.
    _, quarantine = run(rows, store, "drop_duplicate_images", consider_text=True)
    assert quarantine["reason"].tolist() == ["duplicate image and text of row 0"]


def test_near_duplicate_images_name_the_kept_row_and_the_distance(tmp_path):
    store = tmp_path / "images"
    picture = photo(1)
    shifted = picture.crop((2, 0, 96, 72)).resize((96, 72))
    rows = image_rows(store, [([encoded(picture)], "q"), ([encoded(photo(2))], "q"),
                              ([encoded(shifted, "JPEG", quality=70)], "q"), ([encoded(photo(3))], "other q")])
    state: dict = {}
    params = image_steps.NearDuplicateImageParams()
    first = image_steps.drop_near_duplicate_images(Batch(rows.iloc[:2], COLUMNS, state, store), params)
    rest = image_steps.drop_near_duplicate_images(Batch(rows.iloc[2:], COLUMNS, state, store), params)
    assert first.quarantined.empty and len(rest.kept) == 1
    reason = rest.quarantined["reason"][2]
    distance = int(reason.removeprefix("near-duplicate image of row 0 (distance ").removesuffix(")"))
    assert 0 < distance <= params.max_distance  # shifted and re-encoded: close, not equal

    _, quarantine = run(rows, store, "drop_near_duplicate_images", max_distance=0)
    assert quarantine.empty
    _, quarantine = run(rows.assign(messages=[chat(q, "a") for q in ("q", "q", "another q", "q")]), store,
                        "drop_near_duplicate_images", consider_text=True)
    assert quarantine.empty  # the near copy asks another question


def test_an_image_step_in_a_recipe_without_images_is_refused_in_one_line():
    with pytest.raises(ValidationError, match=r"clean\.steps\.1 \(strip_image_metadata\): image steps apply to "
                                              r"data\.format image_text, not 'prompt_completion'; remove it"):
        Recipe.model_validate({"name": "r", "data": {"sources": [{"type": "jsonl", "path": __file__}]},
                               "clean": {"steps": [{"step": "drop_empty"}, {"step": "strip_image_metadata"}]}})


def image_recipe(manifest: Path, **clean) -> Recipe:
    return Recipe.model_validate({
        "name": "pictures", "objective": "vision_language",
        "data": {"format": "image_text", "split": {"validation": 0.2, "test": 0.2},
                 "sources": [{"type": "jsonl", "path": str(manifest), "prompt": "What is this?",
                              "columns": {"images": "image", "completion": "caption"}}]},
        **({"clean": clean} if clean else {})})


def test_image_text_recipes_get_the_image_steps_and_a_warning_without_the_decode_check(tmp_path, caplog):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    with caplog.at_level(logging.WARNING, logger="ftcore.recipe"):
        assert [s.model_dump() for s in image_recipe(manifest).clean.steps] == IMAGE_TEXT_STEPS
        assert not caplog.records
        image_recipe(manifest, steps=[{"step": "drop_empty"}])
    assert [r.getMessage() for r in caplog.records] == [
        "clean.steps: no drop_undecodable_images for data.format image_text, so an image that does not decode stops "
        "training when it is reached; add {step: drop_undecodable_images}"]


def test_the_clean_stage_checks_rewrites_and_prunes_images_and_shows_them_in_the_card(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    exif = Image.Exif()
    exif.get_ifd(GPS).update({1: "N", 2: (52.0, 31.0, 12.0)})
    files = {f"{k}.png": encoded(photo(k)) for k in range(8)}
    files |= {"gps.jpg": encoded(photo(10), "JPEG", exif=exif), "large.png": encoded(photo(11, (400, 300))),
              "broken.png": encoded(photo(12))[:300], "near.jpg": encoded(photo(0).crop((2, 0, 96, 72)), "JPEG")}
    for name, content in files.items():
        (data / name).write_bytes(content)
    captions = [*(f"picture {k}" for k in range(8)), "a phone photo", "a large one", "a broken one", "the first again",
                "picture 3"]
    images = [*files, "3.png"]  # the last row repeats row 3 exactly
    (data / "manifest.jsonl").write_text("".join(json.dumps({"image": i, "caption": c}) + "\n"
                                                 for i, c in zip(images, captions, strict=True)))
    steps = [*IMAGE_TEXT_STEPS[:2], {"step": "filter_image_size", "max_pixels": 200 * 150, "action": "resize"},
             *IMAGE_TEXT_STEPS[3:], {"step": "drop_near_duplicate_images"}]
    recipe = image_recipe(data / "manifest.jsonl", steps=steps)
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    out = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean", batch_rows=3)  # across batches

    m = out.metrics
    assert m["rows_in"] == 13 == m["rows_kept"] + m["rows_quarantined"]
    quarantine = pd.read_parquet(out.artifacts["quarantine"])
    reasons = dict(zip(quarantine["step"], quarantine["reason"], strict=True))
    assert reasons.keys() == {"drop_undecodable_images", "drop_duplicates", "drop_near_duplicate_images"}
    assert reasons["drop_undecodable_images"].startswith("image cannot be decoded: ")
    assert reasons["drop_duplicates"] == "duplicate of row 3"
    assert re.fullmatch(r"near-duplicate image of row 0 \(distance [1-6]\)", reasons["drop_near_duplicate_images"])

    dataset = pd.read_parquet(out.artifacts["dataset"])
    named = {n for frame in (dataset, quarantine) for cell in frame["images"] for n in image_names(cell)}
    store = out.path / "images"
    assert {p.name for p in store.iterdir()} == named  # the rewritten originals are gone
    by_caption = dict(zip(dataset["messages"].map(json.loads).str[1].str["content"],
                          dataset["images"].map(image_names).str[0], strict=True))
    assert opened(store, by_caption["a large one"]).size == (200, 150)
    assert not opened(store, by_caption["a phone photo"]).getexif().get_ifd(GPS)
    assert not (collected.path / "images" / by_caption["a phone photo"]).exists()  # a new file, not the collected

    card = out.artifacts["data_card"].read_text(encoding="utf-8")
    thumbnails = sorted((out.path / "card").iterdir())
    assert len(thumbnails) == min(8, int(m["rows_train"]))
    for thumbnail in (opened(p.parent, p.name) for p in thumbnails):
        assert thumbnail.format == "JPEG" and thumbnail.width <= 384 and thumbnail.height <= 96
    assert card.count("](data:image/jpeg;base64,") == len(thumbnails)
    assert "| What is this? | picture " in card and "## Image sizes in the train split" in card
    assert {out.artifacts[p.stem] for p in thumbnails} == set(thumbnails)  # logged to MLflow beside the card
    assert f"The dataset's image store holds {len(named)} files; the 2 that no kept" in card  # GPS, large


def test_without_the_decode_check_the_card_counts_the_images_that_do_not_open(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "words.png").write_bytes(b"these are words, not a picture")
    (data / "manifest.jsonl").write_text("".join(json.dumps({"image": "words.png", "caption": f"picture {k}"}) + "\n"
                                                 for k in range(5)))
    recipe = image_recipe(data / "manifest.jsonl", steps=[{"step": "drop_empty"}])
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    out = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    card = out.artifacts["data_card"].read_text(encoding="utf-8")
    assert f"**Images of the train split that do not open: {out.metrics['rows_train']:.0f}.**" in card
    assert not (out.path / "card").exists()  # and shows no thumbnail of them


def test_the_default_steps_on_the_tux_paint_captions(shared_data, tmp_path):
    """854 drawings and photos, at most 512 px a side, none with metadata: the one row quarantined shows the same
    fireman with the same caption as an earlier row (the stamp is filed under people and military)."""
    recipe = Recipe.model_validate({
        "name": "tuxpaint", "objective": "vision_language",
        "data": {"format": "image_text", "sources": [{
            "type": "jsonl", "path": str(shared_data / "tuxpaint_captions" / "manifest.jsonl"),
            "prompt": "Describe the picture.", "columns": {"images": "image", "completion": "caption"}}]}})
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    out = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    m = out.metrics
    assert m["rows_in"] == 854 and m["rows_quarantined"] == 1
    assert {s["step"]: m[f"{s['step']}.rows_quarantined"] for s in IMAGE_TEXT_STEPS} == {
        "drop_undecodable_images": 0, "drop_placeholder_mismatch": 0, "filter_image_size": 0,
        "strip_image_metadata": 0, "strip_markup": 0, "normalize_whitespace": 0, "drop_empty": 0,
        "drop_duplicates": 1}
    quarantine = pd.read_parquet(out.artifacts["quarantine"])
    assert quarantine["reason"].str.startswith("duplicate of row ").all()
    assert len(list((out.path / "images").iterdir())) == 853  # nothing rewritten; the copy's file is shared
