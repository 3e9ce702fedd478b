"""Dequantize-once cache of a bitsandbytes 4-bit base model.

bitsandbytes dequantizes every NF4 weight to the compute dtype on every forward and again on
every backward of every micro-batch. The base is frozen, so those dequantized values never
change: this module computes them once, keeps them on the GPU, and lets each `Linear4bit` run
`F.linear` on the kept copy. The values are bitwise the ones bitsandbytes reconstructs each time
(the same `dequantize_4bit`, including the nested absmax), so the model is the same QLoRA model;
only the time spent re-deriving it goes. On the GPU bitsandbytes multiplies batches of up to
1,536 tokens with a fused kernel of its own instead of dequantize + `F.linear`, so results agree
with it within bf16 reduction-order noise, and bitwise with its unfused path.

The 4-bit weights stay in place (the adapter, its config and the parameter counts are unchanged);
`release` switches back. The cost is memory: about 2 bytes per base weight (14 GB for the 7B's
language model), so `plan` decides from the memory this process may use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MethodType

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
# "auto" keeps this much (or a quarter of the usable memory, if more) free for activations and
# optimizer state after the cache: the 7B's 16-clip micro-batch of 1-3 s clips needs 10-20 GB.
AUTO_HEADROOM_BYTES = 12 * 2**30


@dataclass
class CachePlan:
    """What `plan` decided, recorded in the run's summary."""

    mode: str
    used: bool
    layers: int
    bytes: int
    reason: str

    def to_dict(self) -> dict:
        return {"mode": self.mode, "used": self.used, "layers": self.layers, "gb": round(self.bytes / 1e9, 2),
                "reason": self.reason}


def quantized_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The bitsandbytes 4-bit linear layers of `model` (its frozen, quantized base). peft's LoRA
    wrappers of them are also named Linear4bit, hence the isinstance test."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # no bitsandbytes: nothing can be 4-bit
        return []
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _compute_dtype(layer: torch.nn.Module) -> torch.dtype:
    return layer.compute_dtype if layer.compute_dtype is not None else layer.weight.quant_state.dtype


def cache_bytes(layers: list[torch.nn.Module]) -> int:
    return sum(int(torch.Size(l.weight.quant_state.shape).numel()) * torch.empty((), dtype=_compute_dtype(l)).element_size()
               for l in layers)


SHARED_GPU_REASON = ("the GPU is shared by {n} jobs (4 jobs with the cache and CUDA graphs each ran 9-13 s a step "
                     "on an H200; the same slowness later came with one job alone with LoRA dropout, so sharing "
                     "may not be the cause, but sharing with the cache is not measured yet; docs/PERFORMANCE.md)")


def plan(model: torch.nn.Module, mode: str, device: torch.device, usable_bytes: int | None = None,
         shared_by: int = 1) -> CachePlan:
    """Whether to cache: "on", "off", or "auto" (GPU only, when the copy leaves enough headroom and
    the GPU is not shared with other jobs of the queue)."""
    if mode not in MODES:
        raise ValueError(f"base cache mode must be one of {', '.join(MODES)} (got {mode!r})")
    layers = quantized_layers(model)
    size = cache_bytes(layers)
    if not layers:
        return CachePlan(mode, False, 0, 0, "the base is not 4-bit quantized")
    if mode == "off":
        return CachePlan(mode, False, len(layers), size, "turned off")
    if mode == "on":
        return CachePlan(mode, True, len(layers), size, "turned on")
    if device.type != "cuda":
        return CachePlan(mode, False, len(layers), size, "auto: only on a GPU")
    if shared_by > 1:
        return CachePlan(mode, False, len(layers), size, "auto: " + SHARED_GPU_REASON.format(n=shared_by))
    usable = usable_bytes if usable_bytes is not None else usable_gpu_bytes(device)
    free = usable - torch.cuda.memory_allocated(device)
    headroom = max(AUTO_HEADROOM_BYTES, usable // 4)
    if free - size >= headroom:
        return CachePlan(mode, True, len(layers), size,
                         f"auto: {size / 1e9:.1f} GB copy leaves {(free - size) / 1e9:.1f} GB free")
    return CachePlan(mode, False, len(layers), size,
                     f"auto: a {size / 1e9:.1f} GB copy would leave {(free - size) / 1e9:.1f} GB free "
                     f"(needs {headroom / 1e9:.1f} GB)")


def usable_gpu_bytes(device: torch.device) -> int:
    """Memory this process may use on the GPU: the card, or less under a per-process cap."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(index)
    return int(total * fraction)


def _dequantized(layer: torch.nn.Module) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    weight = layer.weight
    return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(_compute_dtype(layer))


def _cached_forward(self, x: torch.Tensor) -> torch.Tensor:
    # Linear4bit.forward with the dequantized weight kept: same casts, same F.linear.
    inp_dtype = x.dtype
    x = x.to(self._dequantized_weight.dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, self._dequantized_weight, bias).to(inp_dtype)


def apply(model: torch.nn.Module) -> int:
    """Keep every 4-bit layer's dequantized weight and use it; returns the bytes kept."""
    total = 0
    for layer in quantized_layers(model):
        if "_dequantized_weight" in layer.__dict__:
            continue
        with torch.no_grad():
            layer._dequantized_weight = _dequantized(layer)
        layer.forward = MethodType(_cached_forward, layer)
        total += layer._dequantized_weight.numel() * layer._dequantized_weight.element_size()
    return total


def release(model: torch.nn.Module) -> None:
    """Back to bitsandbytes' own forward; frees the copies."""
    for layer in quantized_layers(model):
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("_dequantized_weight", None)


def prepare(model: torch.nn.Module, mode: str, device: torch.device, usable_bytes: int | None = None,
            shared_by: int = 1) -> CachePlan:
    """`plan`, then `apply` when it says so; logs the decision."""
    decision = plan(model, mode, device, usable_bytes, shared_by)
    if decision.used:
        apply(model)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log.info("base cache %s: %s", "on" if decision.used else "off", decision.reason)
    return decision
