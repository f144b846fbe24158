"""What the benchmarks share: the repository, its config.yaml, and the embedded model's spec,
weights and prompt formatter as a pipeline job loads them (run them with the project's .venv,
where editunlearn is installed)."""
from pathlib import Path

import yaml

from editunlearn.models import ModelSpec, load_model
from editunlearn.prompts import PromptFormatter

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
