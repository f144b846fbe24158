"""What the benchmarks share: the repository, its config.yaml, and the embedded model's spec,
weights and prompt formatter as a pipeline job loads them (run them with the project's .venv,
where editunlearn is installed)."""
from pathlib import Path

import yaml

from editunlearn.io import read_json
from editunlearn.models import ModelSpec, load_model
from editunlearn.prompts import PromptFormatter
from editunlearn.training import collate_qa, sequence_nll

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"


def repo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def model_spec(config: dict) -> ModelSpec:
    return ModelSpec.from_config(MODEL, config["models"][MODEL], models_dir=str(REPO / "resources/models"))


def load_embedded(config: dict, device: str = "cpu"):
    """(spec, model, tokenizer, formatter): the embedded model as a pipeline job loads it, with
    the prompt formatter evaluation uses."""
    spec = model_spec(config)
    model, tokenizer = load_model(spec, device)
    return spec, model, tokenizer, PromptFormatter(tokenizer, spec.chat_template, spec.system_prompt)


def gd_batches(formatter, size: int):
    """(forget, retain): the first `size` forget and retain QA of factual n40_s0, collated as GD
    trains on them (needs resources/splits/factual/n40_s0.json)."""
    split = read_json(REPO / "resources/splits/factual/n40_s0.json")
    return tuple(collate_qa(formatter, [(r["question"], r["answer"]) for r in split[part][:size]])
                 for part in ("forget", "retain"))


def gd_step(model, forget, retain, params) -> None:
    """One GD step's forward and backward (no optimiser update: the timing is the model's)."""
    (-sequence_nll(model, forget).mean() + sequence_nll(model, retain).mean()).backward()
    for p in params:
        p.grad = None
