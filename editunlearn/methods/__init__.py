"""Unlearning methods: one module per method, each defining one ``Method`` subclass.

Adding a method = a module ``editunlearn/methods/<name>.py`` with a subclass of ``Method`` whose
``name`` equals the module name, plus its hyper-parameter block under ``methods:`` in config.yaml.
The pipeline finds it by name; nothing else needs to change.
"""

from __future__ import annotations

import ast
import importlib
import logging
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..models import ModelSpec
from ..patch import Patch
from ..prompts import PromptFormatter


@dataclass
class UnlearnContext:
    """Everything a method may use. Forget items carry ``target``: their refusal answer."""

    model: object
    tokenizer: object
    spec: ModelSpec
    formatter: PromptFormatter
    forget: list[dict]
    retain: list[dict]
    hparams: dict
    seed: int = 0
    merge: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("editunlearn"))
    key_stats: str | None = None  # key-statistics file (editors that need one; editing/stats.py)
    # loads the model as it was before the dataset's fine-tuning stage (None: there was none, the
    # starting model is the base model); KL's `reference: base` option needs it
    load_base_model: Callable[[], object] | None = None


class Method(ABC):
    name: str = ""
    uses_retain: bool = False  # the paper notes retain-set access is unfair to methods without it

    def __init__(self, hparams: dict):
        self.hparams = dict(hparams)

    @abstractmethod
    def unlearn(self, ctx: UnlearnContext) -> Patch:
        """Unlearn ``ctx.forget`` from ``ctx.model`` and return what changed as a patch.

        The method may modify ``ctx.model`` in place; the pipeline only keeps the patch.
        """


def available_methods() -> list[str]:
    package_dir = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(package_dir)]) if not m.name.startswith("_"))


def method_module_path(name: str) -> Path:
    return Path(__file__).parent / f"{name}.py"


# shared pipeline plumbing: a change here is not a change of any method's behaviour
_INFRASTRUCTURE = {"editunlearn", "editunlearn.methods", "editunlearn.patch", "editunlearn.prompts",
                   "editunlearn.models", "editunlearn.io", "editunlearn.config", "editunlearn.settings"}


def method_code_files(name: str, module_path: str | Path | None = None) -> list[str]:
    """The method's module and every editunlearn module it imports (transitively), except the
    shared plumbing: the files whose edit should rerun the method's jobs. ``module_path`` names a
    module outside this package (the fine-tuning stage)."""
    package_root = Path(__file__).resolve().parent.parent
    seen: dict[str, Path] = {}
    if module_path is not None:
        rel = Path(module_path).resolve().relative_to(package_root.parent).with_suffix("")
        pending = [(".".join(rel.parts), Path(module_path))]
    else:
        pending = [(f"{__name__}.{name}", method_module_path(name))]
    while pending:
        module, path = pending.pop()
        if module in seen or not path.is_file():
            continue
        seen[module] = path
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = module.split(".")[: -node.level] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for full in names:
                if not full.startswith("editunlearn"):
                    continue
                rel = Path(*full.split(".")[1:])
                for candidate in (package_root / rel.with_suffix(".py"), package_root / rel / "__init__.py"):
                    if candidate.is_file():
                        pending.append((full, candidate))
    return sorted(str(path) for module, path in seen.items() if module not in _INFRASTRUCTURE)


def get_method_class(name: str) -> type[Method]:
    if name not in available_methods():
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    module = importlib.import_module(f"{__name__}.{name}")
    classes = [obj for obj in vars(module).values()
               if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method
               and obj.name == name]
    if len(classes) != 1:
        raise TypeError(f"module {module.__name__} must define exactly one Method subclass with "
                        f"name = {name!r}, found {len(classes)}")
    return classes[0]


def make_method(name: str, hparams: dict) -> Method:
    return get_method_class(name)(hparams)
