"""The paper's experiments as job grids: which (model, dataset, method, setting) jobs each table and
figure needs, read from the config's ``experiments:`` block.

Every grid has the same keys (see config.yaml): ``models`` (the paper's; replaced by ``run.models``
where none of them is run here), ``datasets``, ``forget_sizes`` (dataset -> sizes), ``methods``, optional
``targets`` (refusal-target kinds; ``target_methods`` limits the non-default ones to some
methods), ``merges`` (query merging) and ``skip`` (method -> forget sizes left out). Seeds come
from ``run.seeds``. Kept free of Snakemake so the rules, the config check and the tests share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .settings import DEFAULT_TARGET, Setting

TABLES = ("table1", "table2", "table3", "table4", "table5", "table6", "table7")
FIGURES = ("fig3", "fig4", "fig5", "fig6")
COMPARISON = "paper_comparison"
EXPERIMENTS = TABLES + FIGURES + (COMPARISON,)
# Tables the paper comparison reads: 1, 2, 5 for the paper's numbers, 6 and 7 for Obs. 5 and 6.
COMPARISON_TABLES = ("table1", "table2", "table5", "table6", "table7")
# Figures with two parts, each its own grid (paper Fig. 6: left self-improvement, right merging).
PARTS = {"fig6": ("left", "right")}
# The parts that show alignment-judge scores (Table 6, Fig. 6 left); no other job is judged.
JUDGED_PARTS = {"table6": (None,), "fig6": ("left",)}
REFERENCE_METHOD_DEFAULT = "base"


@dataclass(frozen=True)
class Cell:
    """One job of a grid."""

    model: str
    dataset: str
    n: int
    seed: int
    method: str
    target: str = DEFAULT_TARGET
    merge: int = 1

    @property
    def setting(self) -> str:
        return str(Setting(self.n, self.seed, self.merge, self.target))

    @property
    def job_dir(self) -> str:
        return f"results/{self.model}/{self.dataset}/{self.method}/{self.setting}"

    @property
    def summary(self) -> str:
        return f"{self.job_dir}/summary.json"

    def records(self, split: str) -> str:
        return f"{self.job_dir}/eval/{split}.jsonl"

    @property
    def targets(self) -> str:
        return Setting(self.n, self.seed, self.merge, self.target).targets_path(self.dataset, self.model)

    @property
    def judge(self) -> str:
        return f"{self.job_dir}/judge.json"

    def reference(self, method: str) -> "Cell":
        """The same data with another method at the plain setting (no target, no merging)."""
        return Cell(self.model, self.dataset, self.n, self.seed, method)


def block(config: dict, name: str, part: str | None = None) -> dict:
    exp = (config.get("experiments") or {}).get(name) or {}
    return (exp.get(part) or {}) if part else exp


def grid_parts(name: str) -> tuple[str | None, ...]:
    return PARTS.get(name, (None,))


def resolve_models(config: dict, grid: dict) -> tuple[list[str], bool]:
    """(models, substituted): the grid's models that ``run.models`` runs; where none of them is
    run here (the paper's 7B models on a laptop), every model of ``run.models`` instead, and
    ``substituted`` so the table can say so."""
    run_models = list(config["run"]["models"])
    wanted = grid.get("models")
    if not wanted:
        return run_models, False
    kept = [m for m in wanted if m in run_models]
    return (kept, False) if kept else (run_models, True)


def cells(config: dict, grid: dict) -> list[Cell]:
    """Every job of one grid, in table order: model, dataset, forget size, method, target, merge,
    seed."""
    models, _ = resolve_models(config, grid)
    seeds = config["run"]["seeds"]
    targets = grid.get("targets") or [DEFAULT_TARGET]
    target_methods = grid.get("target_methods")
    merges = grid.get("merges") or [1]
    skip = grid.get("skip") or {}
    out = []
    for model in models:
        for dataset in grid.get("datasets") or []:
            for n in grid["forget_sizes"][dataset]:
                for method in grid.get("methods") or []:
                    if n in skip.get(method, []):
                        continue
                    for target in targets:
                        if target != DEFAULT_TARGET and target_methods is not None \
                                and method not in target_methods:
                            continue
                        for merge in merges:
                            for seed in seeds:
                                out.append(Cell(model, dataset, n, seed, method, target, merge))
    return out


def reference_method(config: dict) -> str | None:
    return (config.get("experiments") or {}).get("reference", REFERENCE_METHOD_DEFAULT)


def reference_cells(config: dict, grid_cells: list[Cell]) -> list[Cell]:
    """The starting model (``experiments.reference``, default ``base``) on the data of each cell:
    the tables' "Before" row."""
    method = reference_method(config)
    if not method:
        return []
    return _unique(c.reference(method) for c in grid_cells)


def extra_cells(grid: dict, grid_cells: list[Cell]) -> list[Cell]:
    """Methods a figure draws as horizontal references next to its grid (``references``: the
    same data, no merging), e.g. GD, DPO and AlphaEdit beside merged ROME/MEMIT in Fig. 6."""
    return _unique(c.reference(m) for m in grid.get("references") or [] for c in grid_cells)


def experiment_cells(config: dict, name: str) -> dict:
    """{part: {"cells", "references", "extras"}} of one experiment (part None for one-grid ones)."""
    out = {}
    for part in grid_parts(name):
        grid = block(config, name, part)
        grid_cells = cells(config, grid)
        extras = extra_cells(grid, grid_cells)
        out[part] = {"cells": grid_cells, "references": reference_cells(config, grid_cells + extras),
                     "extras": extras}
    return out


def summaries(config: dict, name: str) -> list[str]:
    """Every summary.json the experiment reads, once."""
    paths = []
    for part in experiment_cells(config, name).values():
        paths += [c.summary for c in part["cells"] + part["extras"] + part["references"]]
    return list(dict.fromkeys(paths))


def describe(config: dict, name: str) -> dict:
    """The resolved experiment, JSON-able: what the table/figure script needs besides the
    summaries, and a rule's ``params`` (a change in any of it reruns that table only)."""
    exp = (config.get("experiments") or {})
    parts = {}
    for part, resolved in experiment_cells(config, name).items():
        grid = block(config, name, part)
        models, substituted = resolve_models(config, grid)
        parts[part or "main"] = {
            "paper_models": list(grid.get("models") or []),
            "models": models,
            "substituted": substituted,
            "grid": {k: v for k, v in grid.items() if k != "models"},
            "cells": [asdict(c) | {"setting": c.setting} for c in resolved["cells"]],
            "extras": [asdict(c) | {"setting": c.setting} for c in resolved["extras"]],
        }
    return {
        "name": name,
        "reference": reference_method(config),
        "groups": exp.get("groups") or {},
        "labels": exp.get("labels") or {},
        "seeds": list(config["run"]["seeds"]),
        "parts": parts,
    }


def built(config: dict) -> list[str]:
    return list((config.get("experiments") or {}).get("build") or [])


def _unique(items) -> list:
    return list(dict.fromkeys(items))
