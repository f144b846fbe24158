"""What the benchmarks share: the repository, its config.yaml, and the embedded model's spec as
the pipeline builds it (run them with the project's .venv, where editunlearn is installed)."""
from pathlib import Path

import yaml

from editunlearn.models import ModelSpec

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"


def repo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def model_spec(config: dict) -> ModelSpec:
    return ModelSpec.from_config(MODEL, config["models"][MODEL], models_dir=str(REPO / "resources/models"))
