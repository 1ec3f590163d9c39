"""Built-in steps for the images of image_text rows (ftcore/data/images.py): drop_undecodable_images,
drop_placeholder_mismatch, filter_image_size, strip_image_metadata, drop_duplicate_images and
drop_near_duplicate_images.

A step reads a row's images from `batch.images`, the clean stage's own store. A step that changes an image (a
resize, a metadata strip) never edits a file, which other rows and the collect stage's store may share: it writes
the new image with `put` and rewrites the row's `images` cell to name it; the clean stage removes the originals no
row names any more. An image a step cannot decode quarantines its row, whichever step meets it first.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from io import BytesIO
from itertools import pairwise
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from ftcore.columns import IMAGES_COLUMN
from ftcore.data.images import count_placeholders, image_names, open_image, put
from ftcore.errors import DataError
from ftcore.registry import MESSAGES_COLUMN, Batch, StepParams, StepResult, cleaning_step

EXIF_ORIENTATION = 0x0112
ROTATED = (5, 6, 7, 8)  # EXIF orientations that turn the picture a quarter: its width and height swap
HASH_BITS = 64  # imagehash.phash's default 8x8 hash
DECODE_CHECK = "drop_undecodable_images"  # the step an image_text recipe should not go without (ftcore/recipe.py)


class ImageProblem(Exception):
    """What is wrong with one image; the message completes "image ..." in the row's quarantine reason."""


def _store(batch: Batch) -> Path:
    if batch.images is None:
        raise DataError("image cleaning steps read the images of data.format image_text; this data has none")
    return batch.images


def _which(i: int, n: int) -> str:
    return "image" if n == 1 else f"image {i + 1} of {n}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _per_image(store: Path, names: list[str], fn: Callable[[Path], object]) -> tuple[list, str]:
    """(`fn(path)` of each of a row's images, ""), or ([], the row's quarantine reason) when `fn` raises
    ImageProblem for one, the reason naming which."""
    results = []
    for i, name in enumerate(names):
        try:
            results.append(fn(store / name))
        except ImageProblem as e:
            return [], f"{_which(i, len(names))} {e}"
    return results, ""


def _each_image(batch: Batch, fn: Callable[[Path], str | None]) -> StepResult:
    """`fn(path)` on every image of every row: the new store name of an image it rewrote (None: unchanged), or
    ImageProblem, which quarantines the row. Rows whose images were rewritten name the new ones."""
    store = _store(batch)
    frame = batch.frame.copy()
    reasons = pd.Series("", index=frame.index, dtype=object)
    for index, cell in frame[IMAGES_COLUMN].items():
        names = image_names(cell)
        results, reasons[index] = _per_image(store, names, fn)
        rewritten = [new or old for new, old in zip(results, names, strict=True)] if results else names
        if rewritten != names:
            frame.at[index, IMAGES_COLUMN] = json.dumps(rewritten)
    return StepResult.split(frame, reasons == "", reasons)


# --- decoding -----------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageProblem("is missing from the image store") from None
    if size == 0:
        raise ImageProblem("is empty (0 bytes)")


def _decode_problem(error: Exception) -> ImageProblem:
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):  # its message names a temporary path: say it plainly
        return ImageProblem("is not an image in a format PIL reads")
    if isinstance(error, Image.DecompressionBombError):
        return ImageProblem(f"is too large to decode safely ({error})")
    return ImageProblem(f"cannot be decoded: {error}")


def decoded(path: Path):
    """The image at `path` with every pixel decoded (its file closed); ImageProblem when it is missing, empty, not
    an image, or damaged. `verify` checks the structure and checksums (a PNG cut before its end), `load` decodes
    the pixels (a JPEG cut short): each misses what the other finds."""
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # PIL would pad a truncated image with grey and call it whole
        raise DataError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process (set by other code), so "
                        "truncated images would pass the image checks; leave it False")
    _check_file(path)
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Exception as e:  # PIL reports a damaged file as OSError, SyntaxError, ValueError, struct.error, ...
        raise _decode_problem(e) from None
    return image


def _rgb(path: Path):
    """The image as a model sees it (ftcore.data.images.open_image: RGB, transparency on white)."""
    _check_file(path)
    try:
        return open_image(path)
    except Exception as e:  # as in decoded()
        raise _decode_problem(e) from None


def _decodes(path: Path) -> None:
    decoded(path)  # ImageProblem if it does not


@cleaning_step(DECODE_CHECK)
def drop_undecodable_images(batch: Batch, _: StepParams) -> StepResult:
    """Quarantine rows with an image that is empty, not an image, truncated or otherwise does not decode.

    Every image is decoded whole, so one that would stop training half-way is found here. Reason: `image cannot be
    decoded: image file is truncated (8 bytes not processed)`, `image 2 of 3 is empty (0 bytes)`.
    """
    return _each_image(batch, _decodes)


# --- placeholders -------------------------------------------------------------------------------------------------


def _placeholder_problem(messages: str, images: str | None) -> str:
    marked, n = count_placeholders(json.loads(messages)), len(image_names(images))
    return "" if marked == n else f"messages: {_plural(marked, 'image placeholder')} for {_plural(n, 'image')}"


@cleaning_step("drop_placeholder_mismatch")
def drop_placeholder_mismatch(batch: Batch, _: StepParams) -> StepResult:
    """Quarantine rows whose messages hold another number of image placeholders than the row has images.

    Collect gives every image one placeholder (U+FFFC); a text step of the recipe's may have removed or repeated
    one since, and which image goes where would then be a guess. Reason: `messages: 0 image placeholders for 1
    image`.
    """
    _store(batch)  # image_text data only: elsewhere a one-line error, not a KeyError
    reasons = pd.Series([_placeholder_problem(m, i) for m, i in zip(
        batch.frame[MESSAGES_COLUMN], batch.frame[IMAGES_COLUMN], strict=True)], index=batch.frame.index, dtype=object)
    return StepResult.split(batch.frame, reasons == "", reasons)


# --- re-encoding --------------------------------------------------------------------------------------------------

# The format an image is written in, by the format it came in; any other is written as PNG, which keeps every
# pixel. MPO is how PIL reads a phone's JPEG that carries a second picture (a preview, a depth map).
WRITTEN_AS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}
PNG_MODES = {"1", "L", "LA", "I;16", "P", "RGB", "RGBA"}


def _oriented(image):
    """The pixels the way they are meant to be seen: the EXIF orientation applied, since writing the image
    without its EXIF would drop it and show the picture on its side."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def _encoded(pixels, source, keep_icc_profile: bool = True) -> bytes:
    """`pixels` written in `source`'s format (WRITTEN_AS) with no metadata: no EXIF (GPS positions, camera
    serials), XMP, text chunks or comments. Kept: the ICC profile (it defines the pixels' colours) and PNG
    transparency. A JPEG keeps `source`'s quantisation tables and chroma subsampling, so re-encoding it costs
    next to nothing in quality. ImageProblem when PIL cannot write it (an exotic mode)."""
    from PIL import JpegImagePlugin

    fmt = WRITTEN_AS.get(source.format, "PNG")
    options = {}
    if keep_icc_profile and source.info.get("icc_profile"):
        options["icc_profile"] = source.info["icc_profile"]
    if fmt == "PNG" and "transparency" in source.info:
        options["transparency"] = source.info["transparency"]
    if fmt == "JPEG":
        options["qtables"] = source.quantization
        sampling = JpegImagePlugin.get_sampling(source)
        if sampling >= 0:
            options["subsampling"] = sampling
    buffer = BytesIO()
    try:
        if fmt == "PNG" and pixels.mode not in PNG_MODES:  # a CMYK TIFF, a float one, ...
            pixels = pixels.convert("RGBA" if "A" in pixels.getbands() else "RGB")
        pixels = pixels.copy()
        pixels.info = {}  # encoders read some metadata from `info` (PNG's ICC profile): only `options` is written
        pixels.save(buffer, format=fmt, **options)
    except (OSError, ValueError) as e:
        raise ImageProblem(f"cannot be written again as {fmt}: {e}") from None
    return buffer.getvalue()


# --- size limits --------------------------------------------------------------------------------------------------


class FilterImageSizeParams(StepParams):
    min_width: int | None = Field(None, ge=1, description="pixels")
    min_height: int | None = Field(None, ge=1, description="pixels")
    max_width: int | None = Field(None, ge=1, description="pixels")
    max_height: int | None = Field(None, ge=1, description="pixels")
    max_aspect_ratio: float | None = Field(None, ge=1, description="longest side / shortest side")
    max_pixels: int | None = Field(None, ge=1, description="width x height")
    action: Literal["quarantine", "resize"] = Field(
        "quarantine", description="resize: shrink an image over max_width, max_height or max_pixels until it fits "
                                  "them, keeping its aspect ratio; a minimum or the aspect ratio still quarantines")

    @model_validator(mode="after")
    def _limits_in_order(self) -> FilterImageSizeParams:
        limits = ("min_width", "min_height", "max_width", "max_height", "max_aspect_ratio", "max_pixels")
        if all(getattr(self, name) is None for name in limits):
            raise ValueError(f"set at least one limit: {', '.join(limits)}")
        for side in ("width", "height"):
            low, high = getattr(self, f"min_{side}"), getattr(self, f"max_{side}")
            if low is not None and high is not None and high < low:
                raise ValueError(f"max_{side} must be at least min_{side}")
        return self


def _below_minimum(width: int, height: int, p: FilterImageSizeParams) -> str | None:
    for side, value, low in (("width", width, p.min_width), ("height", height, p.min_height)):
        if low is not None and value < low:
            return f"{side} {value} < min_{side} {low}"
    return None


def _above_maximum(width: int, height: int, p: FilterImageSizeParams) -> str | None:
    for side, value, high in (("width", width, p.max_width), ("height", height, p.max_height)):
        if high is not None and value > high:
            return f"{side} {value} > max_{side} {high}"
    if p.max_pixels is not None and width * height > p.max_pixels:
        return f"{width * height} pixels > max_pixels {p.max_pixels}"
    return None


def _too_elongated(width: int, height: int, p: FilterImageSizeParams) -> str | None:
    ratio = max(width, height) / min(width, height)
    if p.max_aspect_ratio is not None and ratio > p.max_aspect_ratio:
        return f"aspect ratio {ratio:.1f} > max_aspect_ratio {p.max_aspect_ratio:g}"
    return None


def _broken_limit(width: int, height: int, p: FilterImageSizeParams, maxima: bool) -> str | None:
    """The first limit the size breaks, named with its value; with `maxima=False` only those resizing cannot fix."""
    return (_below_minimum(width, height, p) or _too_elongated(width, height, p)
            or (_above_maximum(width, height, p) if maxima else None))


def fitted_size(width: int, height: int, p: FilterImageSizeParams) -> tuple[int, int]:
    """The largest size with the image's aspect ratio within max_width, max_height and max_pixels."""
    scale = min(1.0, *(limit / side for limit, side in ((p.max_width, width), (p.max_height, height)) if limit),
                *([math.sqrt(p.max_pixels / (width * height))] if p.max_pixels else []))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _displayed_size(image) -> tuple[int, int]:
    """The size as the picture is seen, from the header alone: the EXIF there (a PNG's getexif() would decode the
    pixels to look for EXIF after them)."""
    from PIL import Image

    exif = Image.Exif()
    if image.info.get("exif"):
        exif.load(image.info["exif"])
    width, height = image.size
    return (height, width) if exif.get(EXIF_ORIENTATION) in ROTATED else (width, height)


def _resizable(image):
    """The pixels in a mode PIL resizes smoothly (a palette image only resizes by its nearest pixel)."""
    if image.mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    return image.convert("RGBA" if "transparency" in image.info or "A" in image.getbands() else "RGB")


def _fit_image(path: Path, p: FilterImageSizeParams) -> str | None:
    from PIL import Image

    _check_file(path)
    try:
        image = Image.open(path)  # reads the header only: the size costs no decoding
    except Exception as e:  # as in decoded()
        raise _decode_problem(e) from None
    with image:
        width, height = _displayed_size(image)
        broken = _broken_limit(width, height, p, maxima=p.action == "quarantine")
        if broken:
            raise ImageProblem(f"is {width}x{height} px: {broken}")
        size = fitted_size(width, height, p)
        if size == (width, height):
            return None
        broken = _below_minimum(*size, p)  # the aspect ratio is the original's, give or take the rounding
        if broken:
            raise ImageProblem(f"is {width}x{height} px, and resized into the maxima {size[0]}x{size[1]} px: {broken}")
    with decoded(path) as whole:  # the size came from the header; resizing decodes the rest
        resized = _resizable(_oriented(whole)).resize(size, Image.Resampling.LANCZOS)
        return put(path.parent, _encoded(resized, whole))


@cleaning_step("filter_image_size", params=FilterImageSizeParams)
def filter_image_size(batch: Batch, p: FilterImageSizeParams) -> StepResult:
    """Quarantine rows with an image outside the size limits, or (action: resize) shrink the ones that are too large.

    Sizes are as the picture is seen (a quarter-turn EXIF orientation swaps width and height). A resized image is
    written as a new file in the same format (without metadata, like strip_image_metadata's) and the row names it.
    Reason: `image is 4000x3000 px: width 4000 > max_width 2048`.
    """
    return _each_image(batch, lambda path: _fit_image(path, p))


# --- metadata -----------------------------------------------------------------------------------------------------

# What PIL puts in `info` that describes the pixels rather than where, when or by whom they were made.
PIXEL_INFO = {"transparency", "gamma", "srgb", "chromaticity", "dpi", "aspect", "interlace", "jfif", "jfif_version",
              "jfif_unit", "jfif_density", "adobe", "adobe_transform", "progressive", "progression", "icc_profile"}
# JPEG segments that hold no metadata: JFIF, the ICC profile, Adobe's colour transform.
PIXEL_SEGMENTS = {("APP0", b"JFIF"), ("APP2", b"ICC_PROFILE"), ("APP14", b"Adobe")}


def has_metadata(image, keep_icc_profile: bool = True) -> bool:
    """Whether a PNG or JPEG carries anything beyond its pixels (EXIF, XMP, text chunks, comments, IPTC, ...)."""
    allowed = PIXEL_INFO if keep_icc_profile else PIXEL_INFO - {"icc_profile"}
    segments = getattr(image, "applist", [])  # a JPEG's APPn and COM segments
    return bool(set(image.info) - allowed) or any(
        not any(marker == m and data.startswith(prefix) for m, prefix in PIXEL_SEGMENTS) for marker, data in segments)


class StripImageMetadataParams(StepParams):
    keep_icc_profile: bool = Field(
        True, description="keep the ICC colour profile: it says what colours the pixels mean, and names no person, "
                          "place or time")


def _strip_metadata(path: Path, p: StripImageMetadataParams) -> str | None:
    with decoded(path) as image:
        if image.format in WRITTEN_AS and not has_metadata(image, p.keep_icc_profile):
            return None
        return put(path.parent, _encoded(_oriented(image), image, p.keep_icc_profile))


@cleaning_step("strip_image_metadata", params=StripImageMetadataParams)
def strip_image_metadata(batch: Batch, p: StripImageMetadataParams) -> StepResult:
    """Rewrite images that carry metadata (EXIF with its GPS position, XMP, PNG text, JPEG comments) as pixels only.

    A PNG or JPEG stays one (a JPEG with its own quantisation tables); an image in another format (GIF, BMP, TIFF,
    WebP) is always rewritten, as PNG: its metadata hides in places of its own. The EXIF orientation is applied to
    the pixels first. Every row is kept, unless an image does not decode.
    """
    return _each_image(batch, lambda path: _strip_metadata(path, p))


# --- duplicates ---------------------------------------------------------------------------------------------------


class ImageDuplicateParams(StepParams):
    consider_text: bool = Field(
        False, description="count the text too: a row repeats another only if its text is the same as well. Off: "
                           "one picture is one example, whatever is asked about it. On: for VQA data, where one "
                           "picture comes with several questions")


def _text_keys(batch: Batch, p: ImageDuplicateParams) -> pd.Series:
    """A 16-byte digest of each row's text with consider_text, else b"" (the text does not count)."""
    if not p.consider_text:
        return pd.Series(b"", index=batch.frame.index, dtype=object)
    texts = pd.concat([batch.text(c) for c in batch.text_columns], axis=1).agg("\x1f".join, axis=1)
    return texts.map(lambda text: hashlib.blake2b(text.encode(), digest_size=16).digest())


def _repeated(n_images: int, p: ImageDuplicateParams) -> str:
    return ("image" if n_images == 1 else "images") + (" and text" if p.consider_text else "")


@cleaning_step("drop_duplicate_images", params=ImageDuplicateParams, stateful=True)
def drop_duplicate_images(batch: Batch, p: ImageDuplicateParams) -> StepResult:
    """Quarantine rows showing the same images (the same bytes) as an earlier row, keeping the first, across batches.

    The store names images by the SHA-256 of their bytes, so equal names are equal files. Rows without images are
    kept. Reason: `duplicate image of row 12` (`duplicate image and text of row 12` with consider_text).
    """
    _store(batch)  # image_text data only: elsewhere a one-line error, not a KeyError
    # 16-byte digests of the rows seen so far, across batches, as drop_duplicates keeps them.
    first_seen: dict[bytes, int] = batch.state.setdefault("first_seen", {})
    reasons = pd.Series("", index=batch.frame.index, dtype=object)
    for (index, cell), text in zip(batch.frame[IMAGES_COLUMN].items(), _text_keys(batch, p), strict=True):
        names = image_names(cell)
        if not names:
            continue
        digest = hashlib.blake2b(json.dumps(names).encode() + text, digest_size=16).digest()
        first = first_seen.setdefault(digest, index)
        if first != index:
            reasons[index] = f"duplicate {_repeated(len(names), p)} of row {first}"
    return StepResult.split(batch.frame, reasons == "", reasons)


class NearDuplicateImageParams(ImageDuplicateParams):
    max_distance: int = Field(
        6, ge=0, le=16, description="bits out of 64 in which two perceptual hashes (phash) may differ and still be "
                                    "one picture; unrelated pictures differ in about 32")


def _phash(path: Path) -> int:
    import imagehash

    return int(str(imagehash.phash(_rgb(path))), 16)


def _pieces(value: int, n: int) -> list[tuple[int, int]]:
    """The hash cut into n pieces. Two hashes within n - 1 bits of each other agree on at least one piece whole, so
    looking rows up by piece finds every candidate without comparing with every kept row."""
    bounds = [HASH_BITS * k // n for k in range(n + 1)]
    return [(k, (value >> low) & ((1 << (high - low)) - 1)) for k, (low, high) in enumerate(pairwise(bounds))]


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return max((x ^ y).bit_count() for x, y in zip(a, b, strict=True))


@cleaning_step("drop_near_duplicate_images", params=NearDuplicateImageParams, stateful=True)
def drop_near_duplicate_images(batch: Batch, p: NearDuplicateImageParams) -> StepResult:
    """Quarantine rows whose images look like an earlier kept row's (perceptual hash within max_distance bits).

    Finds the same picture resized, re-encoded, slightly cropped or recoloured; the hash sees brightness, not
    colour. A row with several images matches a row with as many, image by image (the distance is the largest).
    Reason: `near-duplicate image of row 12 (distance 3)`.
    """
    store = _store(batch)
    by_piece: dict[tuple, list[int]] = batch.state.setdefault("by_piece", {})
    kept: dict[int, tuple[int, ...]] = batch.state.setdefault("kept", {})
    reasons = pd.Series("", index=batch.frame.index, dtype=object)
    for (row, cell), text in zip(batch.frame[IMAGES_COLUMN].items(), _text_keys(batch, p), strict=True):
        names = image_names(cell)
        found, reasons[row] = _per_image(store, names, _phash)
        if not found:
            continue
        hashes = tuple(found)
        # Only rows with as many images (and with consider_text, the same text) can match.
        keys = [(len(names), text, *piece) for piece in _pieces(hashes[0], p.max_distance + 1)]
        candidates = {other for key in keys for other in by_piece.get(key, ())}
        # The closest kept row; of equally close ones, the first.
        match = min(((_distance(hashes, kept[other]), other) for other in candidates), default=None)
        if match is not None and match[0] <= p.max_distance:
            reasons[row] = f"near-duplicate {_repeated(len(names), p)} of row {match[1]} (distance {match[0]})"
            continue
        kept[row] = hashes
        for key in keys:
            by_piece.setdefault(key, []).append(row)
    return StepResult.split(batch.frame, reasons == "", reasons)
