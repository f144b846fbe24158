"""Config validation: the JSON schema first, then cross-references (names of models, methods,
hyper-parameters). Every error names the offending key, and all are raised before any job runs."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from .resources import check_resources

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _schema_messages(config: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        key = _key(error.absolute_path)
        if error.validator == "additionalProperties":
            known = sorted(error.schema.get("properties", {}))
            extra = [k for k in error.instance if k not in error.schema.get("properties", {})]
            for name in extra:
                where = f"{key}.{name}" if error.absolute_path else name
                messages.append(f"config key '{where}' is not allowed"
                                + (f" (allowed: {', '.join(known)})" if known else ""))
        elif error.validator == "required":
            messages.append(f"config key '{key}': {error.message}")
        else:
            messages.append(f"config key '{key}': {error.message}")
    return messages


def method_hparams(config: dict, method: str, model: str, dataset: str | None = None) -> dict:
    """Defaults of the method module <- ``methods.<method>`` <- ``methods.<method>.per_model.<model>``
    <- its ``per_dataset.<dataset>`` (a dataset whose jobs start from a fine-tuned model may need
    other settings than the base model's)."""
    from .methods import get_method_class

    block = copy.deepcopy(config.get("methods", {}).get(method, {}))
    per_model = block.pop("per_model", {}) or {}
    model_block = dict(per_model.get(model, {}) or {})
    per_dataset = model_block.pop("per_dataset", {}) or {}
    hparams = copy.deepcopy(getattr(get_method_class(method), "defaults", {}))
    hparams.update(block)
    hparams.update(model_block)
    if dataset is not None:
        hparams.update(per_dataset.get(dataset, {}) or {})
    return hparams


def _check_keys(where: str, values: dict, defaults: dict, owner: str, messages: list[str]) -> None:
    for key, value in values.items():
        if key not in defaults:
            messages.append(f"config key '{where}.{key}' is not a hyper-parameter of {owner}"
                            f" (known: {', '.join(sorted(defaults)) or 'none'})")
        elif not _same_kind(defaults[key], value):
            messages.append(f"config key '{where}.{key}': expected {type(defaults[key]).__name__}"
                            f" like the default {defaults[key]!r}, got {value!r}")


def _check_finetune(config: dict, messages: list[str]) -> None:
    from .finetune import DEFAULTS

    block = config["finetune"]
    _check_keys("finetune.hparams", block["hparams"], DEFAULTS, "the fine-tuning stage", messages)
    for model, values in block["per_model"].items():
        if model not in config["models"]:
            messages.append(f"config key 'finetune.per_model.{model}': unknown model")
        _check_keys(f"finetune.per_model.{model}", values, DEFAULTS, "the fine-tuning stage", messages)


def _check_hparams(config: dict, messages: list[str]) -> None:
    from .methods import available_methods, get_method_class

    known = available_methods()
    for name, block in (config.get("methods") or {}).items():
        if name not in known:
            messages.append(f"config key 'methods.{name}': no method module named {name!r} "
                            f"(available: {', '.join(known)})")
            continue
        defaults = getattr(get_method_class(name), "defaults", {})
        per_model = (block or {}).get("per_model", {}) or {}
        for model in per_model:
            if model not in config.get("models", {}):
                messages.append(f"config key 'methods.{name}.per_model.{model}': unknown model")
        _check_keys(f"methods.{name}", {k: v for k, v in (block or {}).items() if k != "per_model"},
                    defaults, repr(name), messages)
        for model, values in per_model.items():
            values = dict(values or {})
            per_dataset = values.pop("per_dataset", {}) or {}
            _check_keys(f"methods.{name}.per_model.{model}", values, defaults, repr(name), messages)
            for dataset, overrides in per_dataset.items():
                _check_keys(f"methods.{name}.per_model.{model}.per_dataset.{dataset}", overrides or {},
                            defaults, repr(name), messages)


def _check_llm(config: dict, messages: list[str]) -> None:
    """Each LLM task's merged settings (``llm:`` + ``<task>.llm``): a local model must be in the
    registry (null only where it means the model under study), an openai model must be named."""
    from .llm import TASKS

    for task in TASKS:
        override = config[task].get("llm") or {}
        merged = {**config["llm"], **override}
        where = f"{task}.llm.model" if "model" in override else "llm.model"
        model = merged.get("model")
        if merged["backend"] == "local":
            if model is None and task != "self_improve":
                messages.append(f"config key '{where}': {task} with the local backend needs a "
                                f"model of the registry (null means the model under study, which "
                                f"only self_improve has)")
            elif model is not None and model not in config["models"]:
                messages.append(f"config key '{where}': unknown model {model!r} for the local "
                                f"backend of {task} (registered under models: "
                                f"{', '.join(config['models'])}; for a served model set "
                                f"'{task}.llm.backend: openai')")
        elif model is None:
            messages.append(f"config key '{where}': the openai backend of {task} needs the served "
                            f"model's name (e.g. gpt-4o)")
        if merged["backoff_max"] < merged["backoff_initial"]:
            messages.append(f"config key '{task}.llm.backoff_max': below backoff_initial")
    for i, method in enumerate(config["self_improve"]["methods"]):
        if method not in config["run"]["methods"]:
            messages.append(f"config key 'self_improve.methods[{i}]': method {method!r} is not in "
                            f"run.methods")
def _check_experiments(config: dict, messages: list[str]) -> None:
    """The tables' and figures' grids name registered models and configured methods; query
    merging only for the locate-and-edit editors (the lifelong ones refuse it at run time)."""
    from .editing.editor import LocateEditMethod
    from .experiments import EXPERIMENTS, grid_parts
    from .methods import get_method_class

    exp = config.get("experiments") or {}
    methods = config.get("methods") or {}
    grouped = {m for names in (exp.get("groups") or {}).values() for m in names}
    reference = exp.get("reference", "base")
    if reference and reference not in methods:
        messages.append(f"config key 'experiments.reference': method {reference!r} has no block "
                        f"under methods:")
    for name in exp.get("build") or []:
        for part in grid_parts(name):
            if name != "paper_comparison" and not (exp.get(name) or {}).get(part or "methods"):
                where = f"experiments.{name}" + (f".{part}" if part else "")
                messages.append(f"config key '{where}': missing, but experiments.build lists {name!r}")
    for name in EXPERIMENTS:
        for part in grid_parts(name):
            grid = (exp.get(name) or {}).get(part) if part else exp.get(name)
            if not grid:
                continue
            where = f"experiments.{name}" + (f".{part}" if part else "")
            for i, model in enumerate(grid.get("models") or []):
                if model not in config["models"]:
                    messages.append(f"config key '{where}.models[{i}]': unknown model {model!r} "
                                    f"(registered under models: {', '.join(config['models'])})")
            for dataset in grid.get("datasets") or []:
                if not (grid.get("forget_sizes") or {}).get(dataset):
                    messages.append(f"config key '{where}.forget_sizes.{dataset}': dataset {dataset!r} "
                                    f"is in {where}.datasets but has no forget sizes")
            grid_methods = grid.get("methods") or []
            for key in ("methods", "references"):
                for i, method in enumerate(grid.get(key) or []):
                    if method not in methods:
                        messages.append(f"config key '{where}.{key}[{i}]': method {method!r} has no "
                                        f"block under methods:")
                    elif method not in grouped:
                        messages.append(f"config key '{where}.{key}[{i}]': method {method!r} is in "
                                        f"neither experiments.groups.unlearning nor .editing")
            # target_methods, skip and radar may name methods the grid lacks (a --configfile
            # that shortens `methods` keeps the defaults' entries): they simply do not apply
            if any(m > 1 for m in grid.get("merges") or []):
                smallest = min((n for d in grid["datasets"] for n in grid["forget_sizes"].get(d) or []),
                               default=0)
                if max(grid["merges"]) > smallest:
                    messages.append(f"config key '{where}.merges': merging {max(grid['merges'])} "
                                    f"questions per edit needs at least that many forget items "
                                    f"(smallest forget size: {smallest})")
                for i, method in enumerate(grid_methods):
                    if method in methods and not issubclass(get_method_class(method), LocateEditMethod):
                        messages.append(f"config key '{where}.methods[{i}]': {method!r} cannot "
                                        f"merge queries (only the locate-and-edit editors can); "
                                        f"move it to `references` or drop `merges`")


def _same_kind(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)) and isinstance(value, (int, float)):
        return not (isinstance(default, int) and isinstance(value, float))
    return type(default) is type(value)


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> None:
    with open(schema_path, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    messages = _schema_messages(config, schema)
    if not messages:
        models = config["models"]
        for i, model in enumerate(config["run"]["models"]):
            if model not in models:
                messages.append(f"config key 'run.models[{i}]': unknown model {model!r} "
                                f"(registered under models: {', '.join(models)})")
        for dataset in config["run"]["datasets"]:
            if not config["run"]["forget_sizes"].get(dataset):
                messages.append(f"config key 'run.forget_sizes.{dataset}': dataset {dataset!r} is "
                                f"in run.datasets but has no forget sizes")
        for i, method in enumerate(config["run"]["methods"]):
            if method not in config["methods"]:
                messages.append(f"config key 'run.methods[{i}]': method {method!r} has no block "
                                f"under methods: (add `{method}: {{}}` to use its defaults)")
        _check_hparams(config, messages)
        _check_finetune(config, messages)
        _check_llm(config, messages)
        _check_experiments(config, messages)
        check_resources(config, messages)
    if messages:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(messages))
