"""Vision-language models: a folder that holds one (a user's LLaVA, Idefics3/SmolVLM, ... loaded through
`AutoModelForImageTextToText` and `AutoProcessor`), a small one built from config (llava: CLIP's ViT, a projector and
a Llama; idefics3: SigLIP's ViT over image tiles, a pixel-shuffle connector and a Llama), and the three parts a recipe
trains or freezes: the vision tower, the projector and the language model.

A vision-language folder carries its processor (image processor, tokenizer, chat template), which every stage loads
with the model (ftcore/models/load.py: `load_processor`): it turns a chat whose user turn holds images into the image
tokens and pixel values the model takes.
"""

from __future__ import annotations

from ftcore.models.config import ScratchModelConfig, VisionParts
from ftcore.models.load import MODEL_BUILD_LOCK

IMAGE_TOKEN = "<image>"
# Idefics3's processor writes each tile between these, with a row/column tag, and the downsized whole image last.
TILE_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
               *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]
# Zephyr's layout (load.py's DEFAULT_CHAT_TEMPLATE) with content parts: an image part is the processor's image token.
# Each turn ends with the EOS token, so a model trained on it stops after its answer.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Where each family keeps its parts (transformers 5 layout: `model.<part>`); the first name found wins.
PARTS = {
    "vision_tower": ("vision_tower", "vision_model", "visual"),
    "projector": ("multi_modal_projector", "connector"),
    "language_model": ("language_model", "text_model"),
}


def build_vision_model(cfg: ScratchModelConfig, tokenizer, text_config):
    """(model, processor) of the scratch architecture `cfg.architecture`, around the Llama `text_config`."""
    import torch

    vision = cfg.vision
    encoder = {"hidden_size": vision.hidden_size, "intermediate_size": vision.intermediate_size,
               "num_hidden_layers": vision.num_hidden_layers, "num_attention_heads": vision.num_attention_heads,
               "image_size": vision.image_size, "patch_size": vision.patch_size}
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if cfg.architecture == "llava":
        from transformers import (
            CLIPImageProcessorPil,
            CLIPVisionConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        side = {"height": vision.image_size, "width": vision.image_size}
        # The whole picture resized (not centre-cropped: a crop would cut a wide picture's sides off).
        images = CLIPImageProcessorPil(size=side, crop_size=side, do_center_crop=False)
        # CLIP's features start with its class token, which the "default" strategy drops: one token per patch.
        processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=vision.patch_size,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)
        config = LlavaConfig(vision_config=CLIPVisionConfig(**encoder), text_config=text_config,
                             image_token_id=image_token_id, vision_feature_select_strategy="default",
                             vision_feature_layer=-1, tie_word_embeddings=False)
        model_class = LlavaForConditionalGeneration
    else:
        from transformers import (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3ImageProcessorPil,
            Idefics3Processor,
        )

        scale = 2  # the connector's pixel shuffle: 2x2 patches become one token
        images = Idefics3ImageProcessorPil(size={"longest_edge": vision.image_size * vision.max_tiles},
                                           max_image_size={"longest_edge": vision.image_size}, do_image_splitting=True)
        processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                                      image_seq_len=(vision.image_size // vision.patch_size) ** 2 // scale ** 2,
                                      chat_template=CHAT_TEMPLATE)
        config = Idefics3Config(vision_config=encoder, text_config=text_config, image_token_id=image_token_id,
                                scale_factor=scale, tie_word_embeddings=False)
        model_class = Idefics3ForConditionalGeneration
    with MODEL_BUILD_LOCK:
        torch.manual_seed(cfg.seed)
        return model_class(config), processor


def part_modules(model) -> dict[str, str]:
    """The module name of each part (vision_tower, projector, language_model) in `model`, a vision-language model
    or a PEFT model around one."""
    names = {name for name, _ in model.named_modules()}
    found = {}
    for part, candidates in PARTS.items():
        match = sorted((n for n in names if n.rsplit(".", 1)[-1] in candidates), key=len)
        if match:
            found[part] = match[0]
    return found


def linear_layers(model, parts: list[str]) -> list[str]:
    """The names of the linear layers inside the given parts: what LoRA adapts when a recipe trains those parts
    (PEFT's all-linear would adapt the vision tower and the projector too)."""
    import torch

    prefixes = [f"{name}." for part, name in part_modules(model).items() if part in parts]
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(tuple(prefixes))]


def freeze_parts(model, vision: VisionParts) -> None:
    """Full fine-tuning of a vision-language model: the parts train.vision freezes keep their weights."""
    modules = part_modules(model)
    frozen = [modules[part] for part in PARTS if part in modules and not getattr(vision, part)]
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    if not vision.language_model:  # the output layer belongs to the language model, outside its module
        model.get_output_embeddings().requires_grad_(False)


def image_token_id(processor) -> int:
    """The id of the token a vision-language processor expands each image into."""
    token_id = getattr(processor, "image_token_id", None)
    return token_id if token_id is not None else processor.tokenizer.convert_tokens_to_ids(processor.image_token)
