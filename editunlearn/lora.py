"""A minimal LoRA (Hu et al. 2022): chosen ``nn.Linear`` modules get a frozen base weight W plus a
trainable low-rank update, W + (alpha / r) * B @ A, with A (r x in) small random and B (out x r)
zero, so training starts from the unchanged model.

After training the update is either merged into W (the model keeps its architecture and speed) or
exported as factors for a ``lowrank_delta`` patch adaptor, which merges the same way on load.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .patch import Adapter, add_lowrank_delta

# attention and MLP projections of Llama-style blocks (Llama, Mistral, SmolLM2)
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {r}")
        self.base = base
        self.scale = alpha / r
        self.enabled = True
        device = base.weight.device
        # factors stay float32 even on bfloat16 models: tiny, and Adam updates on them stay exact
        init = torch.randn(r, base.in_features, generator=generator) / base.in_features ** 0.5
        self.lora_A = nn.Parameter(init.to(device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.enabled:
            return out
        update = (x.to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T
        return out + (self.scale * update).to(out.dtype)


def _matches(name: str, suffixes: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def attach_lora(model: nn.Module, r: int, alpha: float, target_modules: list[str] | None = None,
                generator: torch.Generator | None = None) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends with one of ``target_modules``; freeze all other
    parameters. Returns the wrapped module names."""
    suffixes = list(target_modules or DEFAULT_TARGET_MODULES)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and _matches(name, suffixes)]
    if not names:
        raise ValueError(f"LoRA target_modules {suffixes} match no nn.Linear module of "
                         f"{type(model).__name__}")
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, generator))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """The model as it was before LoRA training (the base weights never change)."""
    modules = list(lora_modules(model).values())
    for module in modules:
        module.enabled = False
    try:
        yield model
    finally:
        for module in modules:
            module.enabled = True


def lowrank_adapter(model: nn.Module) -> Adapter:
    """The trained update as a ``lowrank_delta`` adaptor: factors keyed by the weight they change
    (its name in the unwrapped model)."""
    modules = lora_modules(model)
    scales = {m.scale for m in modules.values()}
    if len(scales) != 1:
        raise ValueError(f"LoRA modules have different scales {sorted(scales)}; one adaptor needs one")
    state, params = {}, []
    for name, module in modules.items():
        param = f"{name}.weight"
        params.append(param)
        state[f"{param}.A"] = module.lora_A.detach().cpu().clone()
        state[f"{param}.B"] = module.lora_B.detach().cpu().clone()
    return Adapter("lowrank_delta", {"scale": scales.pop(), "params": params}, state)


def merged_weight(module: LoRALinear) -> torch.Tensor:
    """The weight ``detach_lora(merge=True)`` would leave in ``module``, computed on a copy."""
    weight = module.base.weight.detach().clone()
    add_lowrank_delta(weight, module.lora_A.detach(), module.lora_B.detach(), module.scale)
    return weight


def detach_lora(model: nn.Module, merge: bool = True) -> None:
    """Put the original ``nn.Linear`` modules back, with the update merged into their weights when
    ``merge`` (by the same arithmetic the ``lowrank_delta`` adaptor uses, so both agree exactly)."""
    for name, module in lora_modules(model).items():
        if merge:
            add_lowrank_delta(module.base.weight, module.lora_A.detach(), module.lora_B.detach(),
                              module.scale)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.base)
