"""Memory and compute of training a model with a method: the formulas, and the one calibrated constant.

Memory is the peak of live tensor memory, which is what an allocator must hold (on CUDA,
`torch.cuda.max_memory_allocated`). docs/planning.md derives every term; ftcore/planning/measure.py measures it.
The counts assume a Llama-style decoder (attention + gated MLP) with SDPA attention, which keeps no
sequence x sequence matrices; other architectures (encoders included) are approximated by the same terms. A causal
LM's loss works on logits over the vocabulary, a classifier's on logits over its classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftcore.planning.shape import ModelShape
from ftcore.training.config import DistributedConfig

# How a method trains, as far as memory and compute care. The recipe's method names map onto these in plan.py.
Kind = Literal["full", "adapter", "qlora", "prompt", "few_shot"]

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


@dataclass(frozen=True)
class Setup:
    """How the train stage runs a step, as far as memory is concerned (from train.* and the method)."""

    batch_size: int
    seq_len: int  # the padded length of a batch; prompt methods' virtual tokens included
    value_bytes: int  # bytes per activation value: the dtype the layers compute in
    gradient_checkpointing: bool = False
    autocast: bool = False  # train.mixed_precision bf16 or fp16


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
    """batch x seq x [factor x layers x (11 h + 4 i k) + 4 outputs] values, k the experts each token goes through,
    outputs the vocabulary of a causal LM or the classes of a classifier.

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
    per_token = layers + LOSS_OUTPUT_TENSORS * shape.head_outputs
    casts = AUTOCAST_BYTES * (shape.total_params - shape.embedding_params) if setup.autocast else 0
    return setup.batch_size * setup.seq_len * per_token * setup.value_bytes + casts


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
    base = shape.total_params * shape.bytes_per_param
    if kind == "few_shot":
        return Memory(weights=base, gradients=0, optimizer=0, activations=inference_bytes(shape, setup.seq_len))
    activations = activation_bytes(shape, setup)
    if kind == "full":
        return Memory(weights=base, gradients=base, optimizer=ADAMW_STATES * base, activations=activations)
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
    matmul = shape.total_params - shape.embedding_params - idle_experts
    forward = 2 * matmul + 2 * shape.num_layers * context * shape.hidden_size
    if kind == "full":
        return 3 * forward * tokens
    return (2 * forward + 6 * trainable) * tokens
