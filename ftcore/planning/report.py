"""The plan for people: a table of the methods and the advice with its reasons (`--json` is Plan.to_dict)."""

from __future__ import annotations

from ftcore.planning.advisor import MARGIN, human_bytes, human_count
from ftcore.planning.plan import Plan


def render_plan(plan: Plan):
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    shape, hw, data, advice = plan.model, plan.hardware, plan.data, plan.recommendation
    # One unit for every memory cell keeps the columns narrow enough for an 80-column terminal
    unit, scale = ("GB", 1e9) if max(e.planned_bytes for e in plan.estimates.values()) >= 1e9 else ("MB", 1e6)
    table = Table(title=Text(f"ftflow plan {plan.recipe}"), caption=f"memory in {unit}; * the recipe's method",
                  title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for column in ("method", "trainable", "weights", "grads", "optim", "activ", "peak", "planned", "fits", "FLOPs"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, e in plan.estimates.items():
        m = e.memory
        cells = [f"{v / scale:.1f}" for v in (m.weights, m.gradients, m.optimizer, m.activations, m.peak,
                                              e.planned_bytes)]
        table.add_row(Text(name + (" *" if e.is_recipe else "")), human_count(e.trainable).replace(" ", ""), *cells,
                      "yes" if e.fits else "[red]no[/]", "-" if e.flops is None else human_flops(e.flops),
                      style="bold green" if name == advice.method else None)
    gpus = ", ".join(f"{g.name} ({human_bytes(g.memory_bytes)})" for g in hw.gpus) or "no CUDA device"
    rows = "unknown" if data.rows_train is None else f"{data.rows_train:,}"
    classes = f", {shape.num_labels} classes" if shape.num_labels else ""
    lines = [
        f"model: {shape.architecture}, {human_count(shape.total_params)} parameters in {shape.dtype}, "
        f"{shape.num_layers} layers, hidden {shape.hidden_size}, vocabulary {shape.vocab_size:,}{classes}",
        f"hardware: {hw.cpu_cores} CPU cores, {human_bytes(hw.ram_bytes)} RAM "
        f"({human_bytes(hw.ram_available_bytes)} available); {gpus}",
        f"data: {rows} train rows, {data.tokens_per_row:.1f} tokens per row, batches padded to {data.seq_len} "
        f"tokens ({data.source})",
        f"budget: {human_bytes(plan.budget_bytes)} ({plan.budget_source}); planned = " + (
            f"peak x {MARGIN} + {human_bytes(hw.overhead_bytes)} CUDA context" if hw.gpus else
            f"(peak + {hw.heap_retention:g} x activations glibc's heap keeps) x {MARGIN} + "
            f"{human_bytes(hw.overhead_bytes)} for the Python process"),
    ]
    lines[1:1] = image_lines(plan)
    chosen = plan.estimates[advice.method].label if advice.method in plan.estimates else "none fits"
    chosen += "".join(f" with --set {setting}" for setting in advice.settings)
    advice_lines = [Text(f"recommendation: {chosen}", style="bold"), *(Text(f"  {r}") for r in advice.reasons)]
    return Group(table, *map(Text, lines), *advice_lines)


def image_lines(plan: Plan) -> list[str]:
    """A vision-language model's tower, and the tokens the processor made of the sampled images."""
    vision, images = plan.model.vision, plan.data.images
    if vision is None:
        return []
    lines = [f"vision: {vision.family}, a tower of {vision.num_layers} layers, hidden {vision.hidden_size}, seeing "
             f"{vision.image_size}x{vision.image_size} pixels in {vision.patch_size}-pixel patches"]
    if images is None:
        return [*lines, "image tokens: not counted (no images read: sources planning does not read)"]
    how = f"{images.tokens_per_tile} per tile, up to {images.tiles_per_image_max} tiles" if images.tokens_per_tile \
        else "each image whole"
    return [*lines, f"image tokens per image: mean {images.tokens_per_image_mean:.0f}, max "
                    f"{images.tokens_per_image_max} ({images.family}: {how}; {images.processor} on {images.images:,} "
                    f"images of {images.rows_sampled:,} sampled rows of {images.rows_total:,})"]


def human_flops(n: float) -> str:
    """1.2 P = 1.2e15 floating-point operations."""
    for size, unit in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.2g}"
