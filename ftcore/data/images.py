"""Images of the `image_text` format: a content-addressed store beside a dataset's Parquet files, and the rows'
chats with one placeholder per image.

A row's `images` cell is a JSON list of store names, `<sha256 of the bytes>.<ext>`, the files in the `images/`
folder beside the dataset's Parquet files. The rows hold the names, so a dataset's content hash covers the pixels,
and a re-run over the same files is cached. Every dataset stage writes its own store (the clean stage links the
files it keeps), so a dataset folder is complete by itself.

In a row's `messages`, each image sits where ftcore.columns.IMAGE_PLACEHOLDER (U+FFFC, Unicode's placeholder for an
embedded object) stands, the n-th placeholder being the n-th image. Sources bring `<image>` in text, or
`{"type": "image"}` content parts; both become U+FFFC, which no text-cleaning step takes for markup to strip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
from pathlib import Path

from ftcore.columns import IMAGE_PLACEHOLDER as PLACEHOLDER
from ftcore.columns import IMAGES_COLUMN

IMAGES_DIR = "images"
SOURCE_PLACEHOLDER = "<image>"  # what users write in text (LLaVA's, TRL's and LLaMA-Factory's convention)
# The first bytes of the image files ftflow reads, and the extension its store gives them.
MAGIC = [(b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
         (b"BM", "bmp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif")]
DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
REMOTE = re.compile(r"^https?://", re.IGNORECASE)
MAX_IMAGE_BYTES = 64 << 20  # a larger "image" is a video or a mistake: refused before it is read whole


class ImageUnusable(ValueError):
    """An image value that cannot be used; the message is the quarantine reason."""


def store_of(dataset_file: Path) -> Path:
    """The image store of a dataset's Parquet file (a split, the collected table)."""
    return dataset_file.parent / IMAGES_DIR


def image_names(cell: str | None) -> list[str]:
    return json.loads(cell) if cell else []


def with_image_paths(rows, dataset_file: Path):
    """The rows with each `images` cell naming files (a JSON list of paths in the store beside `dataset_file`),
    for the stages that open them; rows without an images column unchanged."""
    if IMAGES_COLUMN not in rows:
        return rows
    store = store_of(dataset_file)
    return rows.assign(**{IMAGES_COLUMN: [json.dumps([str(store / name) for name in image_names(cell)])
                                          for cell in rows[IMAGES_COLUMN]]})


def open_image(path: str | Path):
    """A stored image decoded as RGB (what the processors take; a greyscale scan, a palette PNG or RGBA become
    three channels, transparency on white)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "P") and ("transparency" in image.info or image.mode != "P"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in MAGIC if data.startswith(magic)), "bin")  # "bin": the checks quarantine it


def put(store: Path, data: bytes) -> str:
    """Write the bytes into the store (once: the name is their hash) and return the name."""
    name = f"{hashlib.sha256(data).hexdigest()}.{extension(data)}"
    target = store / name
    if not target.exists():
        store.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}-{threading.get_ident()}.part")
        partial.write_bytes(data)
        partial.replace(target)  # a crash leaves a .part file, never a half-written image under a store name
    return name


class ImageReader:
    """Turns a source's image values into store names: a path (relative to `folder`, the source file's folder), a
    `data:` URL or bare base64, raw bytes or Hugging Face's `{"bytes", "path"}`, a PIL image, and with
    `fetch_urls` an http(s) URL."""

    def __init__(self, store: Path, fetch_urls: bool = False, timeout_s: float = 30.0):
        self.store, self.fetch_urls, self.timeout_s = store, fetch_urls, timeout_s

    def names(self, value, folder: Path | None) -> list[str]:
        """The store names of a cell holding one image or a list of them."""
        if hasattr(value, "tolist"):  # Parquet and Arrow give arrays
            value = value.tolist()
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ImageUnusable("not a JSON list of images") from None
        values = value if isinstance(value, list) else [] if value is None else [value]
        return [put(self.store, self.bytes_of(v, folder)) for v in values]

    def bytes_of(self, value, folder: Path | None) -> bytes:
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if isinstance(value, dict):  # datasets' Image feature undecoded, or as Parquet stores it
            if value.get("bytes"):
                return bytes(value["bytes"])
            if value.get("path"):
                return self.bytes_of(value["path"], folder)
            raise ImageUnusable("an image record with neither bytes nor path")
        if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image (a decoded Image feature)
            from io import BytesIO

            buffer = BytesIO()
            value.save(buffer, format="PNG")
            return buffer.getvalue()
        if not isinstance(value, str) or not value.strip():
            raise ImageUnusable(f"expected an image path, URL or base64 text, got {type(value).__name__}")
        text = value.strip()
        if DATA_URL.match(text):
            return _base64(text.split(",", 1)[1])
        if REMOTE.match(text):
            return self._fetch(text)
        if len(text) > MAX_PATH_CHARS or not _is_file(text, folder):
            data = _bare_base64(text)  # a picture's base64 runs to kilobytes, and decodes to an image's first bytes
            if data is not None:
                return data
        return _file_bytes(text, folder)

    def _fetch(self, url: str) -> bytes:
        if not self.fetch_urls:
            raise ImageUnusable(f"image URL {url[:100]}: fetching images is off for this source (set "
                                "fetch_images: true on the source to allow it)")
        import requests

        try:
            response = requests.get(url, timeout=self.timeout_s, stream=True)
            response.raise_for_status()
            data = response.raw.read(MAX_IMAGE_BYTES + 1, decode_content=True)
        except requests.RequestException as e:
            raise ImageUnusable(f"image URL {url[:100]}: {type(e).__name__}") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageUnusable(f"image URL {url[:100]}: larger than {MAX_IMAGE_BYTES >> 20} MiB")
        return data


MAX_PATH_CHARS = 4096


def _is_file(text: str, folder: Path | None) -> bool:
    path = Path(text).expanduser()
    return (path if path.is_absolute() or folder is None else folder / path).is_file()


def _bare_base64(text: str) -> bytes | None:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if extension(data) != "bin" else None


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageUnusable("invalid base64 image data") from None


def _file_bytes(text: str, folder: Path | None) -> bytes:
    path = Path(text).expanduser()
    if not path.is_absolute():
        if folder is None:
            raise ImageUnusable(f"image path {text!r} is relative, and this source has no folder to resolve it in; "
                                "give absolute paths or base64 data")
        path = folder / path
    if not path.is_file():
        raise ImageUnusable(f"image file not found: {path}")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ImageUnusable(f"image file {path}: larger than {MAX_IMAGE_BYTES >> 20} MiB")
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Chats with image placeholders


def with_placeholders(text: str) -> str:
    return text.replace(SOURCE_PLACEHOLDER, PLACEHOLDER)


def content_text(content) -> str:
    """A message's content as text with placeholders: a string (`<image>` marks an image), or a list of content
    parts (`{"type": "text", "text": ...}`, `{"type": "image"}`; OpenAI's `image_url` parts count as images)."""
    if isinstance(content, str):
        return with_placeholders(content)
    if hasattr(content, "tolist"):
        content = content.tolist()
    if not isinstance(content, list):
        raise ImageUnusable(f"message content is a {type(content).__name__}, expected text or a list of parts")
    pieces = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(with_placeholders(str(part.get("text") or "")))
        elif kind in ("image", "image_url"):
            pieces.append(PLACEHOLDER)
        else:
            raise ImageUnusable(f"content part {i} has type {kind!r}; expected text or image")
    return "".join(pieces)


def count_placeholders(messages: list[dict]) -> int:
    return sum(m["content"].count(PLACEHOLDER) for m in messages)


def placed_images(messages: list[dict], n_images: int) -> list[dict]:
    """The chat with its images placed: as marked, or with no placeholder at all, every image before the first
    user turn's text (TRL's and LLaVA's convention for data without placeholders). A count that differs from the
    images is refused: which image goes where would be a guess."""
    marked = count_placeholders(messages)
    if marked == 0 and n_images:
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first_user is None:
            raise ImageUnusable("no user message to put the images in")
        messages = [*messages]
        messages[first_user] = {**messages[first_user],
                                "content": PLACEHOLDER * n_images + messages[first_user]["content"]}
    elif marked != n_images:
        raise ImageUnusable(f"{marked} image placeholder{'s' * (marked != 1)} for {n_images} "
                            f"image{'s' * (n_images != 1)}")
    return messages


def content_parts(text: str) -> list[dict]:
    """Text with placeholders as content parts, for a processor's chat template."""
    parts: list[dict] = []
    for i, piece in enumerate(text.split(PLACEHOLDER)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts
