"""A patch is what unlearning changed, and nothing else: replaced parameter tensors and/or adaptor
modules (for methods such as GRACE and WISE that add a component instead of changing weights).
Evaluation = fresh base model + patch. Stored as one safetensors file; structure in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_path

FORMAT_VERSION = 1

# adaptor type -> function(model, config, state) that installs it; methods register their own
ADAPTERS: dict[str, Callable] = {}


def register_adapter(kind: str):
    def wrap(fn):
        ADAPTERS[kind] = fn
        return fn

    return wrap


@dataclass
class Adapter:
    kind: str
    config: dict
    state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Patch:
    method: str
    base_model: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    adapters: list[Adapter] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # free-form provenance: hparams, timings, counts

    @classmethod
    def from_changes(cls, method: str, base_model: str, model, names) -> "Patch":
        """Patch holding the current values of the named parameters of ``model``."""
        params = dict(model.named_parameters())
        return cls(method, base_model, {n: params[n].detach().cpu().clone() for n in names})

    def apply(self, model) -> None:
        """Write the patch into ``model`` in place (the model must be the patch's base model)."""
        params = dict(model.named_parameters())
        for name, value in self.tensors.items():
            if name not in params:
                raise KeyError(f"patch from {self.method!r} changes {name!r}, which this model "
                               f"does not have: was it made for another model than {self.base_model!r}?")
            if params[name].shape != value.shape:
                raise ValueError(f"patch tensor {name!r} has shape {tuple(value.shape)}, model has "
                                 f"{tuple(params[name].shape)}: made for {self.base_model!r}?")
            with torch.no_grad():
                params[name].copy_(value.to(params[name].dtype))
        for adapter in self.adapters:
            if adapter.kind not in ADAPTERS:
                # adaptor code lives in the method's module; importing it registers the adaptor
                from .methods import get_method_class

                get_method_class(self.method)
            if adapter.kind not in ADAPTERS:
                raise KeyError(f"no adaptor named {adapter.kind!r} is registered")
            ADAPTERS[adapter.kind](model, adapter.config, adapter.state)

    def save(self, path) -> None:
        flat = {f"tensor/{n}": t.contiguous() for n, t in self.tensors.items()}
        for i, adapter in enumerate(self.adapters):
            flat.update({f"adapter/{i}/{k}": t.contiguous() for k, t in adapter.state.items()})
        meta = {
            "format_version": FORMAT_VERSION, "method": self.method, "base_model": self.base_model,
            "adapters": [{"kind": a.kind, "config": a.config} for a in self.adapters],
            "info": self.info,
        }
        with atomic_path(path) as tmp:
            save_file(flat, str(tmp), metadata={"editunlearn": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> "Patch":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("editunlearn")
        if raw_meta is None:
            raise ValueError(f"{path} is not an editunlearn patch (no 'editunlearn' metadata)")
        meta = json.loads(raw_meta)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: patch format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        flat = load_file(str(path))
        tensors = {k[len("tensor/"):]: v for k, v in flat.items() if k.startswith("tensor/")}
        adapters = []
        for i, spec in enumerate(meta["adapters"]):
            prefix = f"adapter/{i}/"
            state = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
            adapters.append(Adapter(spec["kind"], spec["config"], state))
        return cls(meta["method"], meta["base_model"], tensors, adapters, meta.get("info", {}))


def add_lowrank_delta(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    """weight += scale * b @ a, computed in float32 on the weight's device. LoRA merging uses this
    too, so a trained model and base + patch agree bit for bit."""
    delta = scale * (b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32))
    with torch.no_grad():
        weight.add_(delta.to(weight.dtype))


@register_adapter("lowrank_delta")
def _install_lowrank_delta(model, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Low-rank weight updates (LoRA factors): ``config = {"scale": s, "params": [names]}``, state
    ``<name>.A`` (r x in) and ``<name>.B`` (out x r); merged, so inference costs nothing extra."""
    params = dict(model.named_parameters())
    for name in config["params"]:
        if name not in params:
            raise KeyError(f"lowrank_delta adaptor changes {name!r}, which this model does not have")
        a, b = state[f"{name}.A"], state[f"{name}.B"]
        if (b.shape[0], a.shape[1]) != tuple(params[name].shape):
            raise ValueError(f"lowrank_delta factors for {name!r} make shape {(b.shape[0], a.shape[1])}, "
                             f"model has {tuple(params[name].shape)}")
        add_lowrank_delta(params[name], a, b, config["scale"])
