"""Tables, the experiment grid, the paper's numbers and the table/figure targets of the workflow.

Marks are checked on fixed inputs: the paper's own Table 1 numbers (Llama2-7B, factual), whose
bold/underline/grey cells are worked out by hand below."""

import copy
import csv
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml

from editunlearn import experiments as E
from editunlearn.config import ConfigError, validate_config
from editunlearn.paper import (PAPER_FILES, compare, kendall_tau, load_paper, observations,
                               read_csv)
from editunlearn.tables import LAYOUTS, Row, make_table, mark, read_judge, split_columns
from editunlearn.testing import save_tiny_llama, tiny_model_entry
import fake_results
from fake_results import write_experiment

PAPER_METHODS = ["ga", "gd", "kl", "dpo", "rome", "memit", "grace", "wise", "alphaedit"]
METRICS = ["rouge1_recall", "prob", "mrr", "hit_rate"]
with open(os.path.join(os.path.dirname(__file__), os.pardir, "config.yaml")) as _f:
    DEFAULT_EXPERIMENTS = yaml.safe_load(_f)["experiments"]


def method_fields(method):
    """A table CSV row's method, label and group, as the default config prints them."""
    group = next(g for g, members in DEFAULT_EXPERIMENTS["groups"].items() if method in members)
    return {"method": method, "label": DEFAULT_EXPERIMENTS["labels"][method], "group": group}


@pytest.fixture
def config(repo):
    with open(repo / "config.yaml") as f:
        return yaml.safe_load(f)


def grid(forget_sizes, methods, **keys):
    """An experiment grid: datasets and their forget sizes, methods, other keys."""
    return {"datasets": list(forget_sizes), "forget_sizes": forget_sizes, "methods": methods, **keys}


def _grid_config(config, name, block, seeds=(0,), model="smollm2-135m"):
    config = copy.deepcopy(config)
    config["run"]["models"], config["run"]["seeds"] = [model], list(seeds)
    config["experiments"][name] = block
    return config


def _write_summary(root, model, dataset, method, setting, splits):
    """splits: {split: {metric: value}}; the derived fields as the pipeline computes them."""
    job = root / "results" / model / dataset / method / setting
    job.mkdir(parents=True, exist_ok=True)
    forget, retain = splits["forget"]["rouge1_recall"], splits["retain"]["rouge1_recall"]
    out = {"model": model, "dataset": dataset, "method": method, "setting": setting,
           "splits": {s: {"split": s, "n": 10, **v} for s, v in splits.items()},
           "combined_score": 1 - forget + retain, "non_functional": forget < 0.05 and retain < 0.05}
    (job / "summary.json").write_text(json.dumps(out))


def _paper_splits(paper, method, with_rephrase=False):
    splits = {split: {m: paper[("table1", "Llama2-7B", "factual", 40, method, f"{split}_{m}")]
                      for m in METRICS} for split in ("forget", "retain")}
    if with_rephrase:
        splits["rephrase"] = {m: paper[("table2", "Llama2-7B", "factual", 40, method, f"rephrase_{m}")]
                              for m in METRICS}
    return splits


@pytest.fixture
def paper_table1(tmp_path, config):
    """Table 1 (and 2) of the pipeline built from the paper's own Llama2-7B factual numbers."""
    paper = load_paper()
    cfg = _grid_config(config, "table1", grid({"factual": [40]}, PAPER_METHODS))
    cfg["experiments"]["table2"] = grid({"factual": [40]}, PAPER_METHODS)
    for method in PAPER_METHODS:
        _write_summary(tmp_path, "smollm2-135m", "factual", method, "n40_s0",
                       _paper_splits(paper, method, with_rephrase=True))
    before = {m: 0.82 if m == "rouge1_recall" else 0.5 for m in METRICS}  # paper §4.2: 0.82 before
    _write_summary(tmp_path, "smollm2-135m", "factual", "base", "n40_s0",
                   {"forget": before, "retain": before, "rephrase": before})
    outputs = {}
    for name in ("table1", "table2"):
        outputs[name] = {k: tmp_path / f"{name}.{k}" for k in ("csv", "md", "tex", "html")}
        make_table(name, E.describe(cfg, name), outputs[name], root=str(tmp_path))
    return outputs


def _md_rows(path):
    """{row label: [cells]} of a Markdown table file."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_table1_marks_on_the_papers_numbers(paper_table1):
    rows = _md_rows(paper_table1["table1"]["md"])
    # forget Rouge1 (lower is better), greyed GA/KL/ROME/MEMIT left out: GD .30 best unlearning,
    # AlphaEdit .08 best editing and best of all, WISE .28 second of all
    col = 0
    assert rows["GD"][col] == "**0.300**"
    assert rows["AlphaEdit"][col] == "<ins>**0.080**</ins>"
    assert rows["WISE"][col] == "<ins>0.280</ins>"
    assert rows["DPO"][col] == "0.360" and rows["GRACE"][col] == "0.650"
    # retain Rouge1 (higher is better): GD .62 bold, GRACE .82 bold + top, WISE .76 second
    col = 4
    assert rows["GD"][col] == "**0.620**"
    assert rows["GRACE"][col] == "<ins>**0.820**</ins>"
    assert rows["WISE"][col] == "<ins>0.760</ins>"
    assert rows["AlphaEdit"][col] == "0.690"
    # forget Prob.: ties share the mark: GD = DPO .36 both bold; GRACE = AlphaEdit .35 both best
    col = 1
    assert rows["GD"][col] == rows["DPO"][col] == "**0.360**"
    assert rows["GRACE"][col] == rows["AlphaEdit"][col] == "<ins>**0.350**</ins>"
    assert rows["WISE"][col] == "0.370"
    # non-functional rows: marked, never ranked; the reference row neither
    for label in ("GA †", "KL †", "ROME †", "MEMIT †"):
        assert label in rows and not any("*" in c or "<ins>" in c for c in rows[label])
    assert rows["*Base*"] == ["0.820"] + ["0.500"] * 3 + ["0.820"] + ["0.500"] * 3
    text = paper_table1["table1"]["md"].read_text()
    assert "† non-functional" in text and "smollm2-135m" in text and "n40_s0" in text


def test_table1_latex_and_html_grey_and_marks(paper_table1):
    tex = paper_table1["table1"]["tex"].read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\cmidrule" in tex
    ga = next(line for line in tex.splitlines() if "GA" in line and "dagger" in line)
    assert all(cell.strip().startswith("\\textcolor{gray}") for cell in ga.rstrip(" \\").split(" & "))
    alpha = next(line for line in tex.splitlines() if line.startswith("AlphaEdit"))
    assert alpha.split(" & ")[1] == "\\underline{\\textbf{0.080}}"
    assert "\\textit{Base}" in tex
    html = paper_table1["table1"]["html"].read_text()
    assert html.count('<tr class="grey">') == 4
    assert "<u><b>0.080</b></u>" in html


def test_table1_csv_is_full_precision(paper_table1):
    rows = {r["method"]: r for r in csv.DictReader(open(paper_table1["table1"]["csv"]))}
    assert set(rows) == set(PAPER_METHODS) | {"base"}
    assert rows["gd"]["forget_rouge1_recall"] == "0.3" and rows["gd"]["group"] == "unlearning"
    assert float(rows["wise"]["combined_score"]) == pytest.approx(1 - 0.28 + 0.76)
    assert rows["ga"]["non_functional"] == "1" and rows["gd"]["non_functional"] == "0"
    assert rows["base"]["reference"] == "1"


def test_table2_shows_the_change_vs_the_forget_set(paper_table1):
    rows = _md_rows(paper_table1["table2"]["md"])
    # GD: forget .30 -> rephrase .42 (the paper prints "0.42 (0.12↑)"); best unlearning, and the
    # top 2 of all are AlphaEdit .14 and GD .42 (WISE .46, greyed GA/KL/ROME/MEMIT left out)
    assert rows["GD"][0] == "<ins>**0.420 (+0.120)**</ins>"
    assert rows["AlphaEdit"][0] == "<ins>**0.140 (+0.060)**</ins>"
    assert rows["WISE"][0] == "0.460 (+0.180)"
    data = {r["method"]: r for r in csv.DictReader(open(paper_table1["table2"]["csv"]))}
    assert float(data["gd"]["delta_rephrase_rouge1_recall"]) == pytest.approx(0.12)


def test_mark_rules_by_hand():
    col = split_columns("retain", ["rouge1_recall"])[0]

    def row(method, group, value, **flags):
        r = Row("m", "factual", 4, method, "idk", 1, method, group, False, [0])
        r.values = {col.key: value}
        for k, v in flags.items():
            setattr(r, k, v)
        return r

    rows = [row("a", "unlearning", 0.9), row("b", "unlearning", 0.9), row("c", "editing", 0.5),
            row("d", "editing", 0.95, non_functional=True), row("e", "editing", 0.99, no_forgetting=True),
            row("f", None, 0.7), row("g", "editing", None)]
    mark(rows, [col])
    got = {r.method: r.marks.get(col.key, set()) for r in rows}
    assert got == {"a": {"bold", "underline"}, "b": {"bold", "underline"}, "c": {"bold"},
                   "d": set(), "e": set(), "f": set(), "g": set()}


def test_no_forgetting_and_missing_splits(tmp_path, config):
    cfg = _grid_config(config, "table4", grid({"pistol": [20]}, ["gd", "wise"]))
    flat = {m: 0.5 for m in METRICS}
    _write_summary(tmp_path, "smollm2-135m", "pistol", "base", "n20_s0", {"forget": flat, "retain": flat})
    _write_summary(tmp_path, "smollm2-135m", "pistol", "gd", "n20_s0",
                   {"forget": {**flat, "rouge1_recall": 0.6}, "retain": flat})
    _write_summary(tmp_path, "smollm2-135m", "pistol", "wise", "n20_s0",
                   {"forget": {**flat, "rouge1_recall": 0.1}, "retain": flat})
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md", "tex", "html")}
    rows = make_table("table4", E.describe(cfg, "table4"), out, root=str(tmp_path))
    by = {r.method: r for r in rows}
    assert by["gd"].no_forgetting and not by["wise"].no_forgetting
    md = _md_rows(out["md"])
    assert md["GD ‡"][0] == "0.600" and md["WISE"][0] == "<ins>**0.100**</ins>"
    assert md["WISE"][8:] == ["–"] * 5  # no rephrase, no locality split in these summaries
    assert "rephrase split was not evaluated" in out["md"].read_text()


def test_a_kept_knowledge_column_the_starting_model_already_fails_is_flagged(tmp_path, config):
    # as on the embedded model: the PISTOL fine-tune leaves factual (locality) Rouge1 at ~0.01
    cfg = _grid_config(config, "table4", grid({"pistol": [20]}, ["gd", "wise"]))
    flat = {m: 0.5 for m in METRICS}
    for method, locality in (("base", 0.013), ("gd", 0.006), ("wise", 0.013)):
        _write_summary(tmp_path, "smollm2-135m", "pistol", method, "n20_s0",
                       {"forget": flat, "retain": flat, "locality": {"rouge1_recall": locality}})
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md", "tex", "html")}
    make_table("table4", E.describe(cfg, "table4"), out, root=str(tmp_path))
    note = ("Factual data (locality) Rouge1: the starting model already scores 0.013, so there is "
            "nothing left for unlearning to harm")
    assert note in out["md"].read_text() and note in out["html"].read_text()
    assert out["md"].read_text().count("nothing left for unlearning to harm") == 1  # not retain's
    # a starting model that knows the locality set: no such note
    _write_summary(tmp_path, "smollm2-135m", "pistol", "base", "n20_s0",
                   {"forget": flat, "retain": flat, "locality": {"rouge1_recall": 0.4}})
    make_table("table4", E.describe(cfg, "table4"), out, root=str(tmp_path))
    assert "nothing left for unlearning to harm" not in out["md"].read_text()


def test_seeds_are_averaged(tmp_path, config):
    cfg = _grid_config(config, "table3", grid({"factual": [4]}, ["gd"]), seeds=(0, 1))
    for seed, value in ((0, 0.2), (1, 0.4)):
        splits = {s: {m: value for m in METRICS} for s in ("forget", "retain")}
        _write_summary(tmp_path, "smollm2-135m", "factual", "gd", f"n4_s{seed}", splits)
        _write_summary(tmp_path, "smollm2-135m", "factual", "base", f"n4_s{seed}", splits)
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md", "tex", "html")}
    make_table("table3", E.describe(cfg, "table3"), out, root=str(tmp_path))
    gd = next(r for r in csv.DictReader(open(out["csv"])) if r["method"] == "gd")
    assert float(gd["forget_rouge1_recall"]) == pytest.approx(0.3) and gd["seeds"] == "0 1"
    assert "mean over seeds" in out["md"].read_text()


def test_table6_reads_judge_scores_defensively(tmp_path, config):
    write_experiment(tmp_path, config, "table6")
    desc = E.describe(config, "table6")
    judges = [c.judge for p in E.experiment_cells(config, "table6").values() for c in p["cells"]]
    (tmp_path / judges[0]).write_text("not json")
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md", "tex", "html")}
    rows = make_table("table6", desc, out, root=str(tmp_path), judges=judges)
    scored = [r for r in rows if not r.reference and r.values["semantic_entailment"] is not None]
    assert len(scored) == 9 and all(1 <= r.values["trustworthiness"] <= 5 for r in scored)
    assert read_judge(str(tmp_path / "missing.json")) == {}
    assert "refusal targets: self-improve (after self-improvement)" in out["md"].read_text()


def test_a_fully_judged_table6_does_not_claim_missing_judge_scores(tmp_path, config):
    # the starting model (Base row) is never judged; only the method rows' gaps count as missing
    write_experiment(tmp_path, config, "table6")
    judges = [c.judge for p in E.experiment_cells(config, "table6").values() for c in p["cells"]]
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md", "tex", "html")}
    make_table("table6", E.describe(config, "table6"), out, root=str(tmp_path), judges=judges)
    text = out["md"].read_text()
    assert "no judge scores" not in text
    assert "in the Base row (Alignment (judge)): measured on the unlearned models only" in text
    (tmp_path / judges[0]).write_text("not json")
    make_table("table6", E.describe(config, "table6"), out, root=str(tmp_path), judges=judges)
    assert "no judge scores (judge.json) for these jobs" in out["md"].read_text()


def test_withheld_judge_scores_are_missing_not_the_unparsed_counts(tmp_path, config):
    # A weak judge: scores withheld (null), the counts of unreadable verdicts under the same names.
    write_experiment(tmp_path, config, "table6")
    cells = [c for p in E.experiment_cells(config, "table6").values() for c in p["cells"]]
    judged = json.loads((tmp_path / cells[0].judge).read_text())
    judged.update(forget_quality=None, entailment=None, trustworthiness=None, reliable=False,
                  unparsed={"forget_quality": 18, "entailment": 1, "trustworthiness": 1})
    (tmp_path / cells[0].judge).write_text(json.dumps(judged))
    assert read_judge(str(tmp_path / cells[0].judge)) == {
        "forget_quality": None, "semantic_entailment": None, "trustworthiness": None,
        "refusal_rate": judged["proxy"]["refusal_rate"],
        "entity_mention_rate": judged["proxy"]["entity_mention_rate"],
        "leak_rate": judged["proxy"]["leak_rate"], "withheld": True}
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md", "tex", "html")}
    rows = make_table("table6", E.describe(config, "table6"), out, root=str(tmp_path),
                      judges=[c.judge for c in cells])
    row = next(r for r in rows if (r.method, r.target, r.n) == (cells[0].method, cells[0].target, cells[0].n))
    assert row.values["forget_quality"] is None and row.values["refusal_rate"] is not None
    assert "scores are withheld" in out["md"].read_text()


def test_every_layout_renders(tmp_path, config):
    for name in E.TABLES:
        write_experiment(tmp_path, config, name)
        out = {k: tmp_path / f"{name}.{k}" for k in ("csv", "md", "tex", "html")}
        make_table(name, E.describe(config, name), out, root=str(tmp_path))
        assert LAYOUTS[name].title in out["md"].read_text()
        assert out["tex"].read_text().count("\\begin{tabular}") == 1


# ---------------------------------------------------------------- the grid


def test_grids_read_only_what_they_need(config):
    def n(name):
        return len(E.summaries(config, name))

    # 9 methods x 2 datasets + 2 Before rows; Table 5: 9 x 2 + 7 x 3 + 5; 5 editors x 2 targets + 1
    assert (n("table1"), n("table5"), n("table6"), n("table7")) == (20, 44, 11, 11)
    # Fig. 6: left 4 + 2 self-improved + Before; right 2 x 6 merges + 3 reference lines + Before
    assert n("fig6") == 23
    assert "results/smollm2-135m/factual/rome/n80_s0_m5/summary.json" in E.summaries(config, "table7")
    assert "results/smollm2-135m/factual/wise/n20_s0_tself-improve/summary.json" in E.summaries(config, "table6")
    assert not any("_t" in p for p in E.summaries(config, "table1"))


def test_models_fall_back_to_the_configured_ones(config):
    config["run"]["models"] = ["llama2-7b-chat", "smollm2-135m"]
    models, substituted = E.resolve_models(config, config["experiments"]["table1"])
    assert models == ["llama2-7b-chat"] and not substituted  # Mistral is not run here
    models, substituted = E.resolve_models(config, config["experiments"]["table3"])
    assert models == ["llama2-7b-chat", "smollm2-135m"] and substituted  # no Llama3.1 here


@pytest.mark.parametrize("mutate, key", [
    (lambda e: e["table1"].update(models=["gpt-9"]), "experiments.table1.models[0]"),
    (lambda e: e["table2"].update(methods=["gd", "rome2"]), "experiments.table2.methods[1]"),
    (lambda e: e["table7"].update(methods=["rome", "wise"]), "experiments.table7.methods[1]"),
    (lambda e: e["fig6"]["right"].update(merges=[100]), "experiments.fig6.right.merges"),
    (lambda e: e["table6"].update(targets=["Self_Improve"]), "experiments.table6.targets[0]"),
    (lambda e: e.update(build=["table1", "table9"]), "experiments.build[1]"),
    (lambda e: e.pop("table4"), "experiments.table4"),
    (lambda e: e["groups"].update(editing=["rome"]), "experiments.table1.methods[5]"),
    (lambda e: e["table5"].update(forget_sizes={"pistol": [30]}), "experiments.table5.forget_sizes.pistol[0]"),
    (lambda e: e["table5"].update(datasets=["factual", "pistol"]), "experiments.table5.forget_sizes.pistol"),
])
def test_bad_experiment_names_the_key(config, mutate, key):
    mutate(config["experiments"])
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert f"'{key}" in str(err.value)


# ---------------------------------------------------------------- the paper's numbers


def test_paper_numbers_are_complete_and_consistent():
    paper = load_paper()
    count = {t: sum(1 for k in paper if k[0] == t) for t in ("table1", "table2", "table5")}
    # Table 1: 9 methods x 8 columns x 2 datasets x 2 models, no MEMIT for Mistral-7B;
    # Table 5: 9 methods at N=20 and 40, 7 from N=60 on
    assert count == {"table1": 288 - 16, "table2": 36, "table5": (9 + 9 + 7 + 7 + 7) * 8}
    for (table, model, dataset, n, method, col), value in paper.items():
        if table == "table5" and n == 40:  # Table 5 at N=40 is Table 1's block to 3 decimals
            assert value == pytest.approx(paper[("table1", "Llama2-7B", "factual", 40, method, col)], abs=0.0051)
    for r in read_csv(PAPER_FILES[1]):  # Table 2's bracketed increases
        if r["delta"]:
            forget = paper[("table1", "Llama2-7B", "factual", 40, r["method"], f"forget_{r['metric']}")]
            assert float(r["value"]) - forget == pytest.approx(float(r["delta"]), abs=0.011)


def test_kendall_tau():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert kendall_tau([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(5 / 30 ** 0.5)  # tau-b with a tie
    assert kendall_tau([1, 2], [1, 2]) is None and kendall_tau([1, 1, 1], [1, 2, 3]) is None


def _paper_as_pipeline_tables():
    """The paper's Tables 1, 2, 5 shaped as the pipeline's table CSV rows (Llama2-7B only)."""
    paper = load_paper()
    tables = {}
    for name in ("table1", "table2", "table5"):
        rows: dict = {}
        for (table, model, dataset, n, method, col), value in paper.items():
            if table == name and model == "Llama2-7B":
                rows.setdefault((dataset, n, method), {})[col] = value
        out = []
        for (dataset, n, method), values in rows.items():
            t1 = {c: paper[("table1", "Llama2-7B", dataset, n, method, c)]
                  for c in ("forget_rouge1_recall", "retain_rouge1_recall")} if name == "table2" else values
            f, r = t1["forget_rouge1_recall"], t1["retain_rouge1_recall"]
            record = {"model": "llama2-7b-chat", "dataset": dataset, "n_forget": str(n), **method_fields(method),
                      "target": "idk", "merge": "1", "reference": "0", "no_forgetting": "0",
                      "non_functional": "1" if f < 0.05 and r < 0.05 else "0",
                      "combined_score": repr(1 - f + r), **{k: repr(v) for k, v in values.items()}}
            if name == "table2":
                record["delta_rephrase_rouge1_recall"] = repr(values["rephrase_rouge1_recall"] - f)
            out.append(record)
        tables[name] = out
    return tables


def test_observations_1_to_4_hold_on_the_papers_own_numbers():
    verdicts = {o["observation"]: o["holds"] for o in observations(_paper_as_pipeline_tables())}
    assert verdicts == {1: "yes", 2: "yes", 3: "yes", 4: "yes", 5: "n/a", 6: "n/a"}


def test_obs1_counts_only_unlearning_methods_that_break():
    tables = _paper_as_pipeline_tables()
    for r in tables["table1"]:  # the paper's GA and KL made functional: only ROME and MEMIT break
        if r["method"] in ("ga", "kl"):
            r["non_functional"] = "0"
    (obs,) = [o for o in observations(tables) if o["observation"] == 1]
    assert obs["holds"] == "no" and "ROME" in obs["evidence"], obs


def test_observations_judge_a_method_by_its_config_group_and_print_its_label():
    tables = _paper_as_pipeline_tables()
    for r in tables["table1"]:  # the paper's GA renamed to a method of the user's; KL made functional
        if r["method"] == "ga":
            r.update(method="my_unlearning", label="Mine", group="unlearning")
        if r["method"] == "kl":
            r["non_functional"] = "0"
    (obs,) = [o for o in observations(tables) if o["observation"] == 1]
    assert obs["holds"] == "yes" and "Mine" in obs["evidence"], obs
    for r in tables["table1"]:  # the same rows grouped as editing: no unlearning method breaks
        if r["method"] == "my_unlearning":
            r["group"] = "editing"
    (obs,) = [o for o in observations(tables) if o["observation"] == 1]
    assert obs["holds"] == "no", obs


def test_obs3_over_fewer_sizes_does_not_fail_the_paper_on_its_own_numbers():
    # the paper's WISE falls from N=20 to N=60 (1.450 -> 1.390) before rising to 1.670 at N=100
    tables = _paper_as_pipeline_tables()
    tables["table5"] = [r for r in tables["table5"] if int(r["n_forget"]) <= 60]
    (obs,) = [o for o in observations(tables) if o["observation"] == 3]
    assert obs["holds"] == "yes", obs
    assert "not judged: the paper's Llama2-7B falls too, 1.450 → 1.390" in obs["evidence"]
    for r in tables["table5"]:  # a pipeline WISE that does fall where the paper's rises fails it
        if r["method"] == "wise" and r["n_forget"] == "60":
            r["combined_score"] = "1.2"
        if r["method"] == "alphaedit" and r["n_forget"] == "60":
            r["combined_score"] = "1.2"
    (obs,) = [o for o in observations(tables) if o["observation"] == 3]
    assert obs["holds"] == "no", obs


def test_obs6_says_when_table5_lacks_the_merged_size():
    tables = _paper_as_pipeline_tables()
    tables["table5"] = [r for r in tables["table5"] if int(r["n_forget"]) <= 60]
    tables["table7"] = [{"model": "llama2-7b-chat", "dataset": "factual", "n_forget": "80", **method_fields(m),
                         "target": "idk", "merge": "5", "reference": "0", "no_forgetting": "0",
                         "non_functional": "0", "combined_score": "1.6"} for m in ("rome", "memit")]
    (obs,) = [o for o in observations(tables) if o["observation"] == 6]
    assert obs["holds"] == "n/a" and "Table 5 has no N=80 rows" in obs["evidence"], obs


def _table6_row(method, target, **values):
    return {"model": "smollm2-135m", "dataset": "factual", "n_forget": "20", **method_fields(method),
            "target": target, "merge": "1", "reference": "0", "no_forgetting": "0",
            "non_functional": "0", **{k: "" if v is None else repr(v) for k, v in values.items()}}


@pytest.mark.parametrize("judge, proxy, trust, holds, said", [
    ((2.0, 3.5), (0.1, 0.2), (3, 4), "yes", "entailment 2.000 → 3.500"),      # the judge decides
    ((None, None), (0.1, 0.2), (None, None), "yes", "entity mention (entailment proxy) 0.100 → 0.200"),
    ((None, None), (0.2, 0.2), (None, None), "no", "entity mention (entailment proxy) 0.200 → 0.200"),
    # trustworthiness must rise for AlphaEdit; WISE's drop is the paper's own "alignment tax"
    ((2.0, 3.5), (0.1, 0.2), (4, 3), "no", "AlphaEdit trustworthiness 4.000 → 3.000"),
])
def test_obs5_reads_entailment_from_the_judge_else_its_proxy(judge, proxy, trust, holds, said):
    rows = [_table6_row(m, t, rephrase_rouge1_recall=r, semantic_entailment=j, entity_mention_rate=p,
                        trustworthiness=None if u is None else (4 if m == "wise" and t == "idk" else u))
            for m in ("wise", "alphaedit")
            for t, r, j, p, u in (("idk", 0.3, judge[0], proxy[0], trust[0]),
                                  ("self-improve", 0.1, judge[1], proxy[1], trust[1]))]
    (obs,) = [o for o in observations({"table6": rows}) if o["observation"] == 5]
    assert obs["holds"] == holds and said in obs["evidence"], obs


def test_comparison_of_the_paper_with_itself():
    values, taus = compare(_paper_as_pipeline_tables(), load_paper())
    assert values and all(v["difference"] == 0 for v in values)
    assert all(t["kendall_tau"] in (None, pytest.approx(1)) for t in taus)
    assert {t["table"] for t in taus} == {"table1", "table2", "table5"}


# ---------------------------------------------------------------- the workflow

TARGETS = list(E.TABLES + E.FIGURES) + ["paper_comparison"]
TINY = {
    "run": {"models": ["smollm2-135m"], "datasets": ["factual"], "methods": ["base"], "seeds": [0],
            "forget_sizes": {"factual": [4]}},
    "experiments": {
        "table1": grid({"factual": [4], "pistol": [20]}, ["ga", "gd", "rome", "wise"]),
        "table2": grid({"factual": [4]}, ["gd", "wise"]),
        "table3": grid({"factual": [4]}, ["gd", "wise"]),
        "table4": grid({"pistol": [20]}, ["gd", "wise"]),
        "table5": grid({"factual": [4, 6]}, ["ga", "gd", "wise"], skip={"ga": [6]}),
        "table6": grid({"factual": [4]}, ["rome", "wise"], targets=["idk"]),
        "table7": grid({"factual": [6]}, ["rome"], merges=[2, 3]),
        "fig3": grid({"factual": [4, 6]}, ["gd", "wise"]),
        "fig4": grid({"factual": [4], "pistol": [20]}, ["ga", "gd", "rome", "wise"]),
        "fig5": grid({"factual": [4]}, ["gd", "wise"], targets=["idk"], questions=1),
        "fig6": {"left": grid({"factual": [4]}, ["gd", "wise"], targets=["idk"]),
                 "right": grid({"factual": [6]}, ["rome"], merges=[1, 2, 3], references=["gd"])},
    },
}


def _snakemake(exe, repo, workdir, *args):
    cmd = [exe, "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "tiny.yaml"), "--cores", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _planned_rules(out):
    """Rules a dry run would run, besides the aggregating `all`."""
    rules = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}
    if not rules:  # an empty plan must be Snakemake's, not a line format this parser misses
        assert "Nothing to be done" in out, out[-3000:]
    return rules


@pytest.mark.slow
def test_every_target_resolves_in_a_dry_run(snakemake_exe, repo, tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = _snakemake(snakemake_exe, repo, tmp_path, "-n", *TARGETS, "results/figures/fig4.png",
                     "results/tables/table1.tex")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert all(counts.get(t) == "1" for t in TARGETS), counts
    assert "unlearn" in counts and "table_base_models" not in counts


def test_the_smoke_config_runs_every_method_into_every_table_and_figure(snakemake_exe, repo, tmp_path):
    # `make smoke` is only worth its time if it reaches everything `make reproduce` does
    cmd = [snakemake_exe, "--snakefile", str(repo / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(repo / "configs" / "smoke.yaml"), "--cores", "1", "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    assert all(counts.get(t) == "1" for t in TARGETS), counts
    assert {"finetune", "rephrase", "self_improve_targets", "judge", "key_stats"} <= set(counts)
    unlearned = set(re.findall(r"method=(\w+)", proc.stdout))
    paper_methods = yaml.safe_load((repo / "config.yaml").read_text())["experiments"]["table1"]["methods"]
    assert set(paper_methods) <= unlearned, unlearned


def test_only_the_parts_that_show_alignment_are_judged(snakemake_exe, repo, tmp_path):
    # Fig. 6: the self-improvement panel shows judge scores, the merging panel does not.
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = _snakemake(snakemake_exe, repo, tmp_path, "-n", "fig6")
    judged = set(re.findall(r"results/[^\s,]+/(\w+)/(n\w+)/judge\.json", out))
    assert judged == {("gd", "n4_s0"), ("wise", "n4_s0")}, judged


@pytest.fixture(scope="module")
def built(snakemake_exe, repo, tmp_path_factory, request):
    """Every table and figure built by Snakemake from fake summaries (no model runs)."""
    workdir = tmp_path_factory.mktemp("tables-wf")
    config = yaml.safe_load((repo / "config.yaml").read_text())
    tiny = copy.deepcopy(TINY)
    tiny["experiments"]["table6"]["targets"] = ["idk", "self-improve"]  # made by the LLM rules
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    for key, value in tiny["experiments"].items():
        config["experiments"][key] = value
    config["run"] = tiny["run"]
    for name in E.EXPERIMENTS[:-1]:
        write_experiment(workdir, config, name, targets=False)
    _snakemake(snakemake_exe, repo, workdir)  # rule all
    return workdir


@pytest.mark.slow
def test_rule_all_builds_every_table_and_figure(built, snakemake_exe, repo):
    for name in E.EXPERIMENTS:
        for path in _outputs(name):
            assert (built / path).stat().st_size > 0, path
    assert not _planned_rules(_snakemake(snakemake_exe, repo, built, "-n"))  # and then nothing


def _outputs(name):
    if name in E.TABLES:
        return [f"results/tables/{name}.{e}" for e in ("csv", "md", "tex", "html")]
    if name == "paper_comparison":
        return ["results/paper/comparison.md", "results/paper/observations.csv"]
    return [f"results/figures/{name}.{e}" for e in ("png", "pdf")]


@pytest.mark.slow
def test_regenerating_one_figure_touches_nothing_else(built, snakemake_exe, repo):
    png = built / "results/figures/fig4.png"
    shutil.move(png, png.with_suffix(".bak"))
    try:
        assert _planned_rules(_snakemake(snakemake_exe, repo, built, "-n")) == {"fig4"}
    finally:
        shutil.move(png.with_suffix(".bak"), png)


@pytest.mark.slow
def test_a_changed_job_redraws_only_what_shows_it(built, snakemake_exe, repo):
    """A rerun job (e.g. after a hyper-parameter change) rewrites its summary: only the tables and
    figures whose grid holds it are redrawn (ROME merging 2 questions: Table 7 and Fig. 6)."""
    summary = built / "results/smollm2-135m/factual/rome/n6_s0_m2/summary.json"
    original, stat = summary.read_text(), summary.stat()
    changed = json.loads(original)
    changed["splits"]["forget"]["rouge1_recall"] = 0.123  # new content: Snakemake compares checksums
    summary.write_text(json.dumps(changed))
    os.utime(summary, (time.time() + 60, time.time() + 60))
    try:
        assert _planned_rules(_snakemake(snakemake_exe, repo, built, "-n")) == \
            {"table7", "fig6", "paper_comparison"}
    finally:
        summary.write_text(original)
        os.utime(summary, (stat.st_atime, stat.st_mtime))


@pytest.mark.slow
def test_report_builds(built, snakemake_exe, repo):
    _snakemake(snakemake_exe, repo, built, "--report", "report.html")
    report = (built / "report.html").read_text(errors="replace")
    assert len(report) > 100_000
    for caption in ("Table 1", "Figure 4", "Figure 6", "rephrase attack"):
        assert caption in report, caption
    assert "Model(s): smollm2-135m" in report  # captions rendered with the job's params


@pytest.mark.slow
def test_the_report_of_what_is_built_leaves_out_an_unfinished_table(built, snakemake_exe, repo):
    """`make reproduce ARGS=table6` after `ARGS=table3` reports both: the `built` target gathers
    every table and figure whose files all exist, and nothing that is missing a file."""
    tex = built / "results/tables/table3.tex"
    shutil.move(tex, tex.with_suffix(".bak"))
    try:
        _snakemake(snakemake_exe, repo, built, "--report", "partial.html", "built")
    finally:
        shutil.move(tex.with_suffix(".bak"), tex)
    report = (built / "partial.html").read_text(errors="replace")
    assert "table1.html" in report and "fig6.png" in report and "comparison.md" in report
    assert "table3.html" not in report and "table3.csv" not in report


@pytest.mark.slow
def test_a_hyperparameter_change_reruns_its_jobs_and_the_tables_showing_them(snakemake_exe, repo, mirror,
                                                                              tmp_path):
    """Real jobs on a tiny random Llama: after GA's learning rate changes, GA's jobs and Table 1
    (which shows GA) rerun; Table 3 (GD only) and GD's jobs do not."""
    tiny = save_tiny_llama(tmp_path / "models" / "tiny", seed=0)
    lora = {"epochs": 1, "batch_size": 2, "lr": 1e-3, "lora": {"r": 2, "alpha": 4}}

    def config(ga_lr):
        return {"device": "cpu", "data": {"mirror": str(mirror), "download": False},
                "run": {"models": ["tiny"], "datasets": ["factual"], "methods": ["base"], "seeds": [0],
                        "forget_sizes": {"factual": [4]}},
                "eval": {"max_new_tokens": 4, "top_k": 100, "max_items": 2},
                "models": {"tiny": tiny_model_entry(tiny)}, "finetune": {"datasets": []},
                # generated data and judging have their own workflow test (test_generate.py)
                "rephrase": {"datasets": []}, "judge": {"datasets": []},
                "methods": {"base": {}, "ga": {**lora, "lr": ga_lr}, "gd": lora},
                "experiments": {"build": ["table1", "table3"],
                                "table1": grid({"factual": [4]}, ["ga", "gd"]),
                                "table3": grid({"factual": [4]}, ["gd"])}}

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config(1e-3)))
    _snakemake(snakemake_exe, repo, tmp_path)
    assert (tmp_path / "results/tables/table1.md").exists() and (tmp_path / "results/tables/table3.md").exists()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config(2e-3)))
    out = _snakemake(snakemake_exe, repo, tmp_path, "-n")
    assert _planned_rules(out) == {"unlearn", "evaluate_split", "summarize_setting", "table1"}
    outputs = {f.strip() for line in re.findall(r"^\s+output: (.+)$", out, re.M) for f in line.split(",")}
    assert all(p.startswith(("results/tiny/factual/ga/", "results/tables/table1.")) for p in outputs), outputs


def test_fake_summaries_are_what_summarize_setting_writes(tmp_path):
    """The tables' and figures' tests read fake job summaries: they must be what the pipeline
    writes from the same split summaries (derived scores included)."""
    from editunlearn.pipeline import summarize_setting

    for method in ("gd", "ga"):  # ga: drawn broken
        fake = fake_results.summary("m", "pistol", method, "n20_s0")
        paths = []
        for split, split_summary in fake["splits"].items():
            paths.append(tmp_path / f"{method}-{split}.summary.json")
            paths[-1].write_text(json.dumps({**split_summary, "seconds": 1.0}))
        out = tmp_path / "results/m/pistol" / method / "n20_s0/summary.json"
        out.parent.mkdir(parents=True)
        summarize_setting([str(p) for p in paths], str(out))
        assert json.loads(out.read_text()) == fake
