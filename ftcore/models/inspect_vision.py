"""`ftflow inspect` on a vision-language model: its vision side (the parts and their parameters, the image and patch
size its tower sees, the image tokens its processor makes of the largest image it takes), read from the config, the
model built on PyTorch's meta device and the folder's processor run on a blank image. ftcore/models/inspect.py
reports the rest and renders these facts among its own.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ftcore.errors import first_line

# The files a vision-language folder's processor loads from (AutoProcessor).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# The keys of an image processor's `size` that bound the images it takes.
IMAGE_SIZE_KEYS = ("longest_edge", "height", "width", "shortest_edge", "max_height", "max_width")


@dataclass(frozen=True)
class VisionReport:
    """A vision-language model's vision side."""

    family: str  # the vision config's model_type
    parts: dict[str, int]  # vision_tower, projector, language_model -> parameters (the output head in the last)
    image_size: int  # pixels per side the tower sees (an image, or one tile)
    patch_size: int
    processor: str | None  # its class; None: the folder has none that loads (`processor_note` says why)
    processor_note: str | None
    image_tokens: int | None  # the image tokens of the largest image the processor takes (all its tiles)
    tokens_per_tile: int | None  # a tiling processor's (Idefics3, SmolVLM)
    max_tiles: int | None  # the tiles of the largest image, the downsized whole included; 1 for one whole image


def vision_report(config, path: Path, own_code: bool) -> VisionReport:
    """The parts of the vision-language model `config` describes (on the meta device, as the report counts it),
    the image and patch size its tower sees, and the image tokens the folder's processor makes."""
    from ftcore.models.meta import architecture_class, count_params, meta_model
    from ftcore.models.vision import part_modules

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = meta_model(config, architecture_class(config))
    modules = part_modules(model)
    parts = {part: count_params(model.get_submodule(name))[1] for part, name in modules.items()
             if part != "language_model"}
    parts["language_model"] = count_params(model)[1] - sum(parts.values())  # with the output head beside it
    vision = config.vision_config
    processor, note = folder_processor(path, own_code)
    tokens, tiles = largest_image_tokens(processor, vision.image_size) if processor is not None else (None, None)
    return VisionReport(family=vision.model_type, parts=parts, image_size=vision.image_size,
                        patch_size=vision.patch_size, processor=type(processor).__name__ if processor else None,
                        processor_note=note, image_tokens=tokens,
                        tokens_per_tile=getattr(processor, "image_seq_len", None), max_tiles=tiles)


def folder_processor(path: Path, own_code: bool):
    """(the folder's processor, None) or (None, why there is none)."""
    if not any((path / name).is_file() for name in PROCESSOR_FILES):
        return None, f"no {' or '.join(PROCESSOR_FILES)} in the folder"
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path), trust_remote_code=own_code), None
    except Exception as e:  # a processor that does not load leaves the rest of the report standing (as targets do)
        return None, f"its processor does not load ({type(e).__name__}: {first_line(e)})"


def largest_image_tokens(processor, image_size: int) -> tuple[int, int]:
    """(image tokens, tiles) of a blank square image as large as the processor takes one (`image_size`, the tower's,
    where its image processor states no size): a resizing processor (LLaVA's) makes the same tokens of every image,
    a tiling one (Idefics3's) makes its most tiles of this one."""
    from PIL import Image

    from ftcore.models.vision import image_token_id

    size = processor.image_processor.size or {}  # a dict, or transformers' SizeDict
    side = max((v for key in IMAGE_SIZE_KEYS if isinstance(v := size.get(key), int)), default=image_size)
    encoded = processor(images=[[Image.new("RGB", (side, side), "white")]], text=[processor.image_token],
                        return_tensors="pt")
    pixels = encoded["pixel_values"]
    return int((encoded["input_ids"] == image_token_id(processor)).sum()), pixels.numel() // pixels.shape[-3:].numel()


def vision_facts(vision: VisionReport) -> list[tuple[str, str]]:
    parts = ", ".join(f"{part.replace('_', ' ')} {n:,}" for part, n in vision.parts.items())
    if vision.processor is None:
        tokens = f"unknown: {vision.processor_note}"
    elif vision.tokens_per_tile:
        tokens = (f"{vision.tokens_per_tile} per tile, up to {vision.max_tiles} tiles ({vision.image_tokens:,} "
                  f"tokens) per image ({vision.processor})")
    else:
        tokens = f"{vision.image_tokens:,} per image, each resized whole ({vision.processor})"
    return [("vision", f"{vision.family}: {parts}"),
            ("images", f"{vision.image_size}x{vision.image_size} pixels in {vision.patch_size}-pixel patches"),
            ("image tokens", tokens)]
