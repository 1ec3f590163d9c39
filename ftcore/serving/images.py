"""Images in chat requests: OpenAI's content parts (`{"type": "image_url", "image_url": {"url": ...}}`) turned into
decoded RGB pictures for a vision-language model's processor, and chats into what its chat template takes.

An image comes inline as a `data:image/...;base64,...` URL, or as an http(s) URL of a host the server was told to
fetch from (`images.url_hosts`). Every way an image can be unusable is the request's fault and a 4xx naming the
content part (`messages.0.content.1.image_url.url`): a remote URL not allowed, a `data:` URL that is not an image,
invalid base64, bytes no image decoder reads, an image over `images.max_image_bytes` or `images.max_pixels`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from dataclasses import dataclass
from io import BytesIO
from typing import NoReturn
from urllib.parse import urlsplit

from ftcore.columns import IMAGE_PLACEHOLDER
from ftcore.data.images import open_image
from ftcore.serving.config import ImagesConfig
from ftcore.serving.errors import ApiError

# data:[<media type>][;<parameter>]*,<data>
DATA_URL = re.compile(r"^data:(?P<media>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL | re.IGNORECASE)
FETCH_CHUNK = 64 << 10
# The formats an image may come in; PIL would open others too, some through external programs (EPS: Ghostscript).
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class Picture:
    """One image of a request: decoded (RGB), the sha256 of the bytes sent (what the response cache keys it by),
    and its `image_stats` for the request log."""

    image: object
    digest: str
    stats: dict[str, float]


def image_stats(image) -> dict[str, float]:
    """What the request log keeps of an image and the monitor compares with the training images: its size and mean
    brightness (0 black to 255 white)."""
    from PIL import ImageStat

    width, height = image.size
    return {"width": float(width), "height": float(height),
            "brightness": round(ImageStat.Stat(image.convert("L")).mean[0], 3)}


def image_urls(messages: list[dict]) -> list[tuple[str, str]]:
    """(param, url) of each image part of the chat, in order: where an error points, and what it names."""
    return [(f"messages.{i}.content.{j}.image_url.url", part["image_url"]["url"])
            for i, message in enumerate(messages) if isinstance(message["content"], list)
            for j, part in enumerate(message["content"]) if part["type"] == "image_url"]


def content_text(content: str | list[dict]) -> str:
    """A message's content as one text: the text parts joined, each image as ftcore.columns.IMAGE_PLACEHOLDER (as
    an image_text dataset writes a chat, so logged inputs compare with the training inputs)."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] if part["type"] == "text" else IMAGE_PLACEHOLDER for part in content)


def template_messages(messages: list[dict]) -> list[dict]:
    """The chat as a processor's chat template takes it: every content a list of parts, an image as
    `{"type": "image"}` (the form the model was trained on: ftcore/training/vision.py)."""
    def parts(content: str | list[dict]) -> list[dict]:
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        return [{"type": "text", "text": p["text"]} if p["type"] == "text" else {"type": "image"} for p in content]

    return [{"role": m["role"], "content": parts(m["content"])} for m in messages]


def load_pictures(urls: list[tuple[str, str]], cfg: ImagesConfig) -> list[Picture]:
    """Each image read (fetched from an allowed host) and decoded; ApiError for the first that cannot be used."""
    return [decode(image_bytes(url, param, cfg), param, cfg) for param, url in urls]


def image_bytes(url: str, param: str, cfg: ImagesConfig) -> bytes:
    if url[:5].lower() == "data:":
        return _inline(url, param, cfg)
    if urlsplit(url).scheme.lower() in ("http", "https"):
        return _fetch(url, param, cfg)
    raise ApiError(400, f"{param}: {url[:40]!r} is neither a data: URL nor an http(s) URL; send the image inline "
                        "as data:image/png;base64,...", param=param, code="invalid_image_url")


def _inline(url: str, param: str, cfg: ImagesConfig) -> bytes:
    match = DATA_URL.match(url)
    media = match["media"].strip().lower() if match else ""
    if not media.startswith("image/"):
        raise ApiError(400, f"{param}: a data: URL of type {media or 'text/plain'!r} is not an image; send "
                            "data:image/png;base64,... (or image/jpeg, image/webp, image/gif)", param=param,
                       code="invalid_image_url")
    if "base64" not in match["params"].lower().split(";"):
        raise ApiError(400, f"{param}: the data: URL is not base64-encoded; send data:{media};base64,...",
                       param=param, code="invalid_image_url")
    encoded = match["data"]
    if len(encoded) // 4 * 3 > cfg.max_image_bytes + 2:  # refused before anything is decoded
        _too_large(param, len(encoded) // 4 * 3, cfg)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: the data: URL's base64 is invalid; encode the image's bytes with standard "
                            "base64 (A-Z, a-z, 0-9, +, /, = padding)", param=param, code="invalid_base64") from None


def _fetch(url: str, param: str, cfg: ImagesConfig) -> bytes:
    """The image at an allowed host's URL, within `fetch_timeout_s` in all and `max_image_bytes`. Redirects are not
    followed: one could lead to a host the server was not told to reach."""
    import requests

    host = (urlsplit(url).hostname or "").lower()
    if host not in cfg.url_hosts:
        raise ApiError(400, f"{param}: this server fetches no images from {host or url[:40]!r}; send the image "
                            "inline as a data: URL (data:image/png;base64,...), or start the server with "
                            f"--image-url-host {host or 'HOST'} (images.url_hosts)", param=param,
                       code="image_url_not_allowed")
    deadline = time.monotonic() + cfg.fetch_timeout_s
    try:
        with requests.get(url, timeout=cfg.fetch_timeout_s, stream=True, allow_redirects=False) as response:
            if response.status_code != 200:
                moved = " (a redirect: give the image's own URL)" if response.is_redirect else ""
                raise ApiError(400, f"{param}: fetching the image answered HTTP {response.status_code}{moved}",
                               param=param, code="image_fetch_failed")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cfg.max_image_bytes:
                _too_large(param, int(declared), cfg)
            data = bytearray()
            for chunk in response.iter_content(FETCH_CHUNK):
                data += chunk
                if len(data) > cfg.max_image_bytes:
                    _too_large(param, len(data), cfg)
                if time.monotonic() > deadline:  # a trickling server: each read has its own timeout
                    raise requests.Timeout()
    except requests.RequestException as e:
        raise ApiError(400, f"{param}: the image could not be fetched ({type(e).__name__}, images.fetch_timeout_s "
                            f"{cfg.fetch_timeout_s:g} s)", param=param, code="image_fetch_failed") from None
    return bytes(data)


def decode(data: bytes, param: str, cfg: ImagesConfig) -> Picture:
    """The bytes decoded as RGB (transparency on white, as training opened its images); the size is read from the
    header first, so a small file that would decode into gigabytes is refused undecoded."""
    from PIL import Image

    if len(data) > cfg.max_image_bytes:
        _too_large(param, len(data), cfg)
    # PIL's decoders raise many kinds of error on damaged data: each is the request's fault.
    try:
        with Image.open(BytesIO(data), formats=FORMATS) as header:
            width, height = header.size
        if width * height > cfg.max_pixels:
            raise Image.DecompressionBombError(f"{width} x {height}")
        image = open_image(BytesIO(data))
    except Image.DecompressionBombError:
        raise ApiError(413, f"{param}: the image has more than images.max_pixels ({cfg.max_pixels}) pixels; send a "
                            "smaller one", "request_too_large", param, "image_too_large") from None
    except Exception as e:
        raise ApiError(400, f"{param}: the bytes are not an image that can be decoded ({type(e).__name__}); send "
                            "a PNG, JPEG, WebP, GIF, BMP or TIFF file", param=param, code="invalid_image") from None
    return Picture(image=image, digest=hashlib.sha256(data).hexdigest(), stats=image_stats(image))


def _too_large(param: str, size: int, cfg: ImagesConfig) -> NoReturn:
    raise ApiError(413, f"{param}: the image has {size} bytes or more; the limit is {cfg.max_image_bytes} "
                        "(images.max_image_bytes)", "request_too_large", param, "image_too_large")
