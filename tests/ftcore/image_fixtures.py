"""Pictures whose caption can only be read off the picture: a shape of one colour on white ("a red circle"), drawn
with PIL in a few milliseconds. A model that answers them right looks at the image; the language model alone can
only guess the colour and the shape."""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: str, shape: str, size: int = 48, offset: int = 0):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    box = [6 + offset, 6 + offset, size - 8 + offset, size - 8 + offset]
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return image


def write_shapes(folder: Path, copies: int = 6) -> Path:
    """`copies` pictures of every colour and shape (shifted a pixel each), their files beside a manifest.jsonl of
    {image (relative path), caption}; returns the manifest."""
    (folder / "pictures").mkdir(parents=True, exist_ok=True)
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            for k in range(copies):
                name = f"pictures/{colour}-{shape}-{k}.png"
                draw(colour, shape, offset=k - copies // 2).save(folder / name)
                rows.append({"image": name, "caption": f"a {colour} {shape}"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest
