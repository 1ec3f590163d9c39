"""Memory and compute of training a model with a method: the formulas, and the one calibrated constant.

Memory is the peak of live tensor memory, which is what an allocator must hold (on CUDA,
`torch.cuda.max_memory_allocated`). docs/planning.md derives every term; ftcore/planning/measure.py measures it.
The counts assume a Llama-style decoder (attention + gated MLP) with SDPA attention, which keeps no
sequence x sequence matrices; other architectures (encoders included) are approximated by the same terms. A causal
LM's loss works on logits over the vocabulary, a classifier's on logits over its classes. A vision-language model's
language model is counted the same way over its sequences, image tokens included; its vision tower (a ViT) and
projector add what they keep for backward where gradients reach them (the parts train.vision trains).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftcore.planning.shape import ModelShape, VisionShape
from ftcore.training.config import DistributedConfig

# How a method trains, as far as memory and compute care. The recipe's method names map onto these in plan.py.
Kind = Literal["full", "adapter", "qlora", "prompt", "few_shot"]
# How far back a vision-language model's gradients go: to the vision tower when it trains, else to the projector
# when that trains, else into the language model only (a frozen tower and projector keep nothing for backward).
GradientsReach = Literal["tower", "projector", "language_model"]

ADAPTER_BYTES = 4  # PEFT keeps adapter weights in fp32 even on a 16-bit base (autocast_adapter_dtype)
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, allocated like the parameter (zeros_like): same dtype
ADAMW_8BIT_BYTES = 2  # bitsandbytes' 8-bit AdamW: both states in one byte each (block constants are ~0.1 %)
# NF4 with double quantization (QLoRA, Dettmers et al. 2023): 4 bits per weight, an 8-bit absmax per block of 64
# weights, and an fp32 scale per 256 of those absmax values.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)

# Activations kept for backward, per token, counted on a Llama decoder layer with autograd's saved-tensor hooks
# (fp32, SDPA attention): about 11 hidden-sized tensors (norm inputs and outputs, q/k/v after RoPE, the attention
# output and its projection input) and 4 intermediate-sized ones (gate, SiLU(gate), up, their product).
SAVED_HIDDEN = 11
SAVED_INTERMEDIATE = 4
# The loss holds four tensors of the head's outputs (a causal LM's vocabulary, a classifier's classes) per token at
# the start of backward: the logits, their log-softmax, and the gradients of both. A classifier's are a rounding
# error; counted per token, as a decoder's score head computes them (an encoder's only at the pooled token).
LOSS_OUTPUT_TENSORS = 4
# Measured over counted: corrects the layer count for what it gets wrong either way (tensors it counts that share
# storage, buffers it misses). Fitted by `python -m ftcore.planning.measure` on its calibration probes, which differ
# from the probes the test checks: 0.958 on 2 CPU cores (docs/planning.md has the figures).
ACTIVATION_FACTOR = 0.96
AUTOCAST_BYTES = 2  # autocast's 16-bit copy of each matmul weight, cached for the step
# A vision tower layer (CLIP's or SigLIP's pre-norm ViT layer) keeps 8 hidden-sized tensors per patch for backward
# (norm inputs and outputs, q, k, v, the attention output) besides its MLP's intermediate ones (shape.py:
# TOWER_SAVED_INTERMEDIATE); outside its layers, the patch embedding keeps its input pixels (3 x patch^2) and the
# embeddings and the last norm 2 hidden-sized ones. Counted with saved-tensor hooks (SDPA attention).
TOWER_SAVED_HIDDEN = 8
TOWER_SAVED_OUTSIDE_LAYERS = 2


@dataclass(frozen=True)
class Setup:
    """How the train stage runs a step, as far as memory is concerned (from train.* and the method)."""

    batch_size: int
    seq_len: int  # the padded length of a batch; prompt methods' virtual tokens included
    value_bytes: int  # bytes per activation value: the dtype the layers compute in
    gradient_checkpointing: bool = False
    autocast: bool = False  # train.mixed_precision bf16 or fp16
    # A vision-language model: per row of the batch, the images or tiles its vision tower sees, the image tokens
    # the projector makes of them and the bytes of the tensors the collator makes (pixel values, a tiling
    # processor's pixel mask: the batch holds them through the step), each row counted at the data's most; and how
    # far back gradients go.
    tiles: int = 0
    image_tokens: int = 0
    input_bytes: float = 0
    gradients_reach: GradientsReach = "language_model"
    # A batch of rows of different lengths carries a padding mask, which PyTorch's SDPA turns into a float
    # batch x seq x seq mask in every layer and keeps for backward (found on the CPU in vision-language batches:
    # 19.5 MiB at 8 x 400 tokens and 4 layers). Set for vision-language recipes, where it was measured.
    padding_mask: bool = False


@dataclass(frozen=True)
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def peak(self) -> float:
        """Backward frees a layer's activations as it writes that layer's gradients, so the two do not peak
        together: the peak is at the start of backward (every activation) or at its end (every gradient)."""
        return self.weights + self.optimizer + max(self.gradients, self.activations)

    def to_dict(self) -> dict[str, float]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "peak": self.peak}


def activation_bytes(shape: ModelShape, setup: Setup, factor: float = ACTIVATION_FACTOR) -> float:
    """batch x seq x [factor x layers x (11 h + 4 i k) + 4 outputs (+ layers x seq for a padding mask)] values, k
    the experts each token goes through, outputs the vocabulary of a causal LM or the classes of a classifier; plus
    a vision-language model's vision side (`vision_values`) and the batch's inputs (pixel values: `input_bytes`).

    With gradient checkpointing only each layer's input (h) is kept, and backward recomputes one layer at a time:
    layers x h + factor x (11 h + 4 i k). Under autocast, matmuls also keep 16-bit copies of their weights for the
    step (2 bytes per matmul weight); on CPU the activations measured no smaller than in fp32, so they are counted
    as before (docs/planning.md).
    """
    layer = SAVED_HIDDEN * shape.hidden_size + SAVED_INTERMEDIATE * shape.intermediate_size * shape.experts_per_token
    if setup.gradient_checkpointing:
        layers = shape.num_layers * shape.hidden_size + factor * layer
    else:
        layers = factor * shape.num_layers * layer
    # The padding mask: seq values per token in each layer that keeps it (the one recomputed under checkpointing)
    mask = (1 if setup.gradient_checkpointing else shape.num_layers) * setup.seq_len if setup.padding_mask else 0
    per_token = layers + LOSS_OUTPUT_TENSORS * shape.head_outputs + mask
    casts = AUTOCAST_BYTES * (shape.total_params - shape.embedding_params) if setup.autocast else 0
    vision = vision_values(shape.vision, setup, factor) if shape.vision else 0
    inputs = setup.batch_size * setup.input_bytes
    return (setup.batch_size * setup.seq_len * per_token + vision) * setup.value_bytes + inputs + casts


def vision_values(vision: VisionShape, setup: Setup, factor: float = ACTIVATION_FACTOR) -> float:
    """What a batch keeps for backward in the vision tower and the projector, in values: the projector's layer
    inputs per image token where gradients reach it, and the tower's layers (as for the language model: factor x
    layers x (8 h + k i) per patch, each layer's input alone with gradient checkpointing) where they reach the
    tower. Where they stop at the language model, the tower and the projector keep nothing."""
    if setup.gradients_reach == "language_model":
        return 0
    projector = setup.image_tokens * vision.projector_saved
    if setup.gradients_reach == "projector":
        return setup.batch_size * projector
    h = vision.hidden_size
    layer = TOWER_SAVED_HIDDEN * h + vision.saved_intermediate * vision.intermediate_size
    layers = vision.num_layers * h + factor * layer if setup.gradient_checkpointing else \
        factor * vision.num_layers * layer
    per_patch = layers + 3 * vision.patch_size ** 2 + TOWER_SAVED_OUTSIDE_LAYERS * h
    return setup.batch_size * (setup.tiles * vision.patches_per_tile * per_patch + projector)


def inference_bytes(shape: ModelShape, context: int) -> float:
    """Few-shot prompting: the KV cache of the context plus one layer's working set and the logits. Not measured:
    an order of magnitude below training's activations, which is what the advice needs."""
    kv = 2 * shape.num_layers * shape.hidden_size * shape.num_kv_heads // shape.num_heads
    layer = SAVED_HIDDEN * shape.hidden_size + SAVED_INTERMEDIATE * shape.intermediate_size * shape.experts_per_token
    return context * (kv + layer + shape.vocab_size) * shape.bytes_per_param


def quantized_base_bytes(shape: ModelShape) -> float:
    """QLoRA's base: linear weights in NF4; embeddings, norms and the output head in fp32, as the method loads
    them (peft's prepare_model_for_kbit_training upcasts them)."""
    return shape.quantizable_params * NF4_BYTES_PER_PARAM + (shape.total_params - shape.quantizable_params) * 4


def training_memory(kind: Kind, shape: ModelShape, trainable: int, setup: Setup) -> Memory:
    """`trainable`: the parameters the optimizer updates; for full fine-tuning every one, but on a vision-language
    model those of the parts train.vision trains (the frozen ones have neither gradients nor optimizer states)."""
    base = shape.total_params * shape.bytes_per_param
    if kind == "few_shot":
        return Memory(weights=base, gradients=0, optimizer=0, activations=inference_bytes(shape, setup.seq_len))
    activations = activation_bytes(shape, setup)
    if kind == "full":
        trained = trainable * shape.bytes_per_param
        return Memory(weights=base, gradients=trained, optimizer=ADAMW_STATES * trained, activations=activations)
    if kind == "qlora":
        base = quantized_base_bytes(shape)
    adapters = trainable * ADAPTER_BYTES
    return Memory(weights=base + adapters, gradients=adapters, optimizer=ADAMW_STATES * adapters,
                  activations=activations)


def per_process(memory: Memory, distributed: DistributedConfig) -> Memory:
    """What one process of a `train.distributed` run holds. DDP keeps a whole copy in each process; FSDP shards
    weights, gradients and optimizer state over the processes; ZeRO stage 1 shards the optimizer state, stage 2 the
    gradients too, stage 3 the weights too. Activations are per process: each runs its own batch_size."""
    n = distributed.num_processes
    if n == 1 or distributed.strategy == "ddp":
        return memory
    stage = 3 if distributed.strategy == "fsdp" else distributed.zero_stage or 2
    return Memory(weights=memory.weights / n if stage >= 3 else memory.weights,
                  gradients=memory.gradients / n if stage >= 2 else memory.gradients,
                  optimizer=memory.optimizer / n, activations=memory.activations)


def training_flops(kind: Kind, shape: ModelShape, trainable: int, tokens: float, context: float) -> float:
    """Floating-point operations of training on `tokens` tokens of average length `context`.

    Forward per token: 2 per matmul weight a token goes through (every parameter but the input embedding lookup;
    of a mixture of experts' expert weights, the share of experts each token is routed to) plus attention's
    2 x layers x context x hidden (Kaplan et al. 2020). Full fine-tuning: forward + backward = 3 forwards (the usual
    6 N). A frozen base with adapters: the backward still carries activation gradients through every frozen weight
    (one more forward's worth) but computes weight gradients only for the trainable ones: 2 forwards + 6 per
    trainable parameter. Few-shot trains nothing.
    """
    if kind == "few_shot":
        return 0.0
    idle_experts = shape.expert_params * (1 - shape.experts_per_token / shape.num_experts)
    # A vision-language model's tower and projector see images, not tokens: vision_flops counts them
    seeing = shape.vision.tower_params + shape.vision.projector_params if shape.vision else 0
    matmul = shape.total_params - shape.embedding_params - idle_experts - seeing
    forward = 2 * matmul + 2 * shape.num_layers * context * shape.hidden_size
    if kind == "full":
        return 3 * forward * tokens
    return (2 * forward + 6 * trainable) * tokens


def vision_flops(vision: VisionShape, tiles: float, image_tokens: float, reach: GradientsReach) -> float:
    """Floating-point operations of a vision-language model's tower over `tiles` images or tiles (2 per weight and
    patch, plus attention's 2 x layers x patches x hidden per patch) and of its projector over `image_tokens`: a
    forward where no gradient reaches the part, 3 forwards (forward and backward) where one does. An adapter on the
    tower is counted like full training of it (an overestimate of a third: its frozen weights get no gradients)."""
    patches = vision.patches_per_tile
    tower = tiles * patches * (2 * vision.tower_params + 2 * vision.num_layers * patches * vision.hidden_size)
    projector = image_tokens * 2 * vision.projector_params
    return tower * (3 if reach == "tower" else 1) + projector * (1 if reach == "language_model" else 3)
