"""Tables from job summaries: the paper's Tables 1-7 as CSV (full precision), Markdown, LaTeX
(booktabs) and HTML (what the Snakemake report shows inline), plus the base-model table.

Marking follows the paper's Table 1: within each block (one model, dataset and setting) and
column, the best unlearning and the best editing method in bold, the top 2 of all methods
underlined; rows of models that no longer work (``non_functional``) or that forgot nothing are
greyed and left out of the ranking. Ranks use full precision; equal values share a mark.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from dataclasses import dataclass, field

from .experiments import Cell
from .io import read_json, write_text
from .metrics import NON_FUNCTIONAL_ROUGE1

METRICS = [("rouge1_recall", "Rouge1"), ("prob", "Prob."), ("mrr", "MRR"), ("hit_rate", "Hit-Rate")]
LOWER, HIGHER = "lower", "higher"
# split -> (the paper's heading, which direction is better)
SPLITS = {
    "forget": ("Forget set (reliability)", LOWER),
    "retain": ("Retain set (locality)", HIGHER),
    "rephrase": ("Rephrased forget set (generalization)", LOWER),
    "locality": ("Factual data (locality)", HIGHER),
}
# judge.json (the alignment judge, paper appendix D): key -> (label, better). Entailment and
# trustworthiness are 1-5 means over items whose forget quality is 1; the rest are rates.
ALIGNMENT = [
    ("forget_quality", "Forget quality", HIGHER),
    ("semantic_entailment", "Entailment", HIGHER),
    ("trustworthiness", "Trustworthiness", HIGHER),
    ("refusal_rate", "Refusal rate", HIGHER),
    ("entity_mention_rate", "Entity mention", HIGHER),
    ("leak_rate", "Leakage", LOWER),
]
DATASET_TITLES = {"factual": "Factual dataset (pretrained knowledge)",
                  "pistol": "PISTOL (finetuned knowledge)"}
MISSING = "–"
NON_FUNCTIONAL, NO_FORGETTING = "†", "‡"
FOOTNOTE_MARKS = (f"{NON_FUNCTIONAL} non-functional (Rouge1 below {NON_FUNCTIONAL_ROUGE1} on both "
                  f"forget and retain); "
                  f"{NO_FORGETTING} forgot nothing (forget Rouge1 not below the starting model's). "
                  f"Such rows (grey in LaTeX and HTML) are left out of the marking.")


@dataclass(frozen=True)
class Column:
    key: str            # CSV column: <split>_<metric>, or an alignment key
    group: str          # heading over the column (test set)
    label: str          # metric
    better: str         # LOWER or HIGHER

    @property
    def arrow(self) -> str:
        return "↓" if self.better == LOWER else "↑"


def split_columns(split: str, metrics=None) -> list[Column]:
    heading, better = SPLITS[split]
    return [Column(f"{split}_{key}", heading, label, better)
            for key, label in METRICS if metrics is None or key in metrics]


ALIGNMENT_COLUMNS = [Column(key, "Alignment (judge)", label, better) for key, label, better in ALIGNMENT]


@dataclass(frozen=True)
class Layout:
    """The shape of one paper table."""

    title: str
    columns: list[Column]
    block_by: tuple[str, ...]       # row fields that start a new block
    mark: bool = True               # bold/underline (the paper marks Tables 1-5)
    delta_vs: str | None = None     # Table 2: each value with its change vs this split
    alignment: bool = False         # Table 6: judge scores


FORGET_RETAIN = split_columns("forget") + split_columns("retain")
LAYOUTS = {
    "table1": Layout("Table 1: Main results comparing editing and unlearning methods",
                     FORGET_RETAIN, ("dataset", "model", "n")),
    "table2": Layout("Table 2: Results under rephrase attack (generalization)",
                     split_columns("rephrase"), ("dataset", "model", "n"), delta_vs="forget"),
    "table3": Layout("Table 3: Results under Llama3.1-8B", FORGET_RETAIN, ("dataset", "model", "n")),
    "table4": Layout("Table 4: Results on PISTOL with 40 forget samples, with factual locality",
                     FORGET_RETAIN + split_columns("rephrase")
                     + split_columns("locality", ["rouge1_recall"]), ("dataset", "model", "n")),
    "table5": Layout("Table 5: Results for different numbers of forget samples (Figure 3)",
                     FORGET_RETAIN, ("dataset", "model", "n")),
    "table6": Layout("Table 6: Self-improvement of refusal targets (Figure 6 left)",
                     FORGET_RETAIN + split_columns("rephrase") + ALIGNMENT_COLUMNS,
                     ("dataset", "model", "n", "target"), mark=False, alignment=True),
    "table7": Layout("Table 7: Query merging (Figure 6 right)",
                     FORGET_RETAIN + split_columns("rephrase"), ("dataset", "model", "n", "merge"),
                     mark=False),
}


@dataclass
class Row:
    model: str
    dataset: str
    n: int
    method: str
    target: str
    merge: int
    label: str
    group: str | None
    reference: bool
    seeds: list[int]
    values: dict = field(default_factory=dict)
    non_functional: bool = False
    no_forgetting: bool = False
    marks: dict = field(default_factory=dict)   # column key -> {"bold", "underline"}

    @property
    def grey(self) -> bool:
        return self.non_functional or self.no_forgetting

    def get(self, key: str) -> str | int:
        return getattr(self, key)


# ---------------------------------------------------------------- reading


def read_judge(path: str) -> dict:
    """The alignment scores of a judge.json as editunlearn.judge writes it: the judge's three
    scores at the top level (null when withheld as unreliable), the proxies under ``proxy``.
    Counts such as ``unparsed`` share the score names and must never be read as scores."""
    try:
        judged = read_json(path)
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(judged, dict):
        return {}
    proxy = judged.get("proxy") if isinstance(judged.get("proxy"), dict) else {}
    sources = {"forget_quality": judged.get("forget_quality"),
               "semantic_entailment": judged.get("entailment"),
               "trustworthiness": judged.get("trustworthiness"),
               "refusal_rate": proxy.get("refusal_rate"),
               "entity_mention_rate": proxy.get("entity_mention_rate"),
               "leak_rate": proxy.get("leak_rate")}
    out = {key: float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
           else None for key, value in sources.items()}
    out["withheld"] = judged.get("reliable") is False
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _split_values(summary: dict, split: str) -> dict:
    values = (summary.get("splits") or {}).get(split) or {}
    return {f"{split}_{key}": values.get(key) for key, _ in METRICS}


def build_rows(desc: dict, part: str = "main", root: str = ".", judges=()) -> list[Row]:
    """The rows of one grid: cells averaged over seeds, in grid order, each block led by its
    reference row (the starting model)."""
    exp = desc["parts"][part]
    groups = {m: g for g, names in desc["groups"].items() for m in names}
    labels = desc["labels"]
    judges = set(judges)

    def key(c):
        return (c["model"], c["dataset"], c["n"], c["method"], c["target"], c["merge"])

    ordered: dict = {}
    for c in exp["cells"] + exp["extras"]:
        ordered.setdefault(key(c), []).append(c)
    rows, references = [], {}
    for (model, dataset, n, method, target, merge), seed_cells in ordered.items():
        summaries, judged = [], []
        for c in seed_cells:
            cell = Cell(model, dataset, n, c["seed"], method, target, merge)
            summaries.append(read_json(os.path.join(root, cell.summary)))
            if cell.judge in judges:
                judged.append(read_judge(os.path.join(root, cell.judge)))
        row = Row(model, dataset, n, method, target, merge, labels.get(method, method),
                  groups.get(method), False, [c["seed"] for c in seed_cells])
        row.values = _aggregate(summaries, judged)
        row.non_functional = any(s.get("non_functional") for s in summaries)
        rows.append(row)
        ref_key = (model, dataset, n, tuple(row.seeds))
        if desc.get("reference") and ref_key not in references:
            references[ref_key] = _reference_row(desc, root, model, dataset, n, row.seeds)
    for row in rows:
        ref = references.get((row.model, row.dataset, row.n, tuple(row.seeds)))
        forget, before = row.values.get("forget_rouge1_recall"), ref and ref.values.get("forget_rouge1_recall")
        row.no_forgetting = bool(ref) and forget is not None and before is not None and forget >= before
    return _with_references(rows, references)


def _aggregate(summaries: list[dict], judged: list[dict]) -> dict:
    values = {}
    for split in SPLITS:
        per_seed = [_split_values(s, split) for s in summaries]
        for col in per_seed[0]:
            values[col] = _mean([v[col] for v in per_seed])
    for split in ("rephrase", "locality"):
        if all(values[f"{split}_{k}"] is None for k, _ in METRICS):
            for k, _ in METRICS:
                values.pop(f"{split}_{k}")
    forget, retain = values.get("forget_rouge1_recall"), values.get("retain_rouge1_recall")
    values["combined_score"] = None if forget is None or retain is None else 1.0 - forget + retain
    for key, _, _ in ALIGNMENT:
        values[key] = _mean([j.get(key) for j in judged])
    values["judge_withheld"] = any(j.get("withheld") for j in judged)
    return values


def _reference_row(desc, root, model, dataset, n, seeds) -> Row:
    method = desc["reference"]
    summaries = [read_json(os.path.join(root, Cell(model, dataset, n, s, method).summary)) for s in seeds]
    row = Row(model, dataset, n, method, "", 1, desc["labels"].get(method, method), None, True, list(seeds))
    row.values = _aggregate(summaries, [])
    return row


def _with_references(rows: list[Row], references: dict) -> list[Row]:
    """Each reference row once, before the first row of its (model, dataset, n)."""
    out, placed = [], set()
    for row in rows:
        ref_key = (row.model, row.dataset, row.n, tuple(row.seeds))
        if ref_key in references and ref_key not in placed:
            placed.add(ref_key)
            out.append(references[ref_key])
        out.append(row)
    return out


# ---------------------------------------------------------------- marking


def blocks(rows: list[Row], block_by: tuple[str, ...]) -> list[tuple[tuple, list[Row]]]:
    """Rows grouped by ``block_by``, blocks ordered by those fields in turn (Table 1: dataset,
    then model), each field's values in the order they first appear; a reference row joins every
    block of its data (Table 6/7 blocks differ by target or merge, which the reference has none of)."""
    out: dict = {}
    refs = [r for r in rows if r.reference]
    methods = [r for r in rows if not r.reference]
    for row in methods:
        out.setdefault(tuple(row.get(k) for k in block_by), []).append(row)
    order = {k: list(dict.fromkeys(r.get(k) for r in methods)) for k in block_by}
    result = []
    for key, members in sorted(out.items(), key=lambda kv: [order[k].index(v) for k, v in zip(block_by, kv[0])]):
        first = members[0]
        own_refs = [r for r in refs if (r.model, r.dataset, r.n) == (first.model, first.dataset, first.n)]
        result.append((key, own_refs + members))
    return result


def mark(rows: list[Row], columns: list[Column]) -> None:
    """Bold: best of its group (unlearning / editing); underline: top 2 of all. Reference and
    grey rows are not ranked. A rank counts the rows strictly better, so ties share a mark."""
    ranked = [r for r in rows if not r.reference and not r.grey]
    for col in columns:
        present = [r for r in ranked if r.values.get(col.key) is not None]
        sign = 1 if col.better == LOWER else -1

        def better_count(value, among):
            return sum(1 for r in among if sign * r.values[col.key] < sign * value)

        for row in present:
            value = row.values[col.key]
            marks = set()
            if better_count(value, present) < 2:
                marks.add("underline")
            same_group = [r for r in present if r.group is not None and r.group == row.group]
            if row.group is not None and better_count(value, same_group) == 0:
                marks.add("bold")
            if marks:
                row.marks[col.key] = marks


# ---------------------------------------------------------------- rendering


def _fmt(value, digits=3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _cell_text(row: Row, col: Column, layout: Layout) -> str:
    text = _fmt(row.values.get(col.key))
    if layout.delta_vs and col.key.startswith("rephrase_") and row.values.get(col.key) is not None:
        base = row.values.get(col.key.replace("rephrase_", f"{layout.delta_vs}_", 1))
        if base is not None:
            text += f" ({row.values[col.key] - base:+.3f})"
    return text


def _row_label(row: Row) -> str:
    label = row.label
    if row.non_functional:
        label += f" {NON_FUNCTIONAL}"
    elif row.no_forgetting:
        label += f" {NO_FORGETTING}"
    return label


def block_title(key: tuple, layout: Layout) -> str:
    fields = dict(zip(layout.block_by, key))
    parts = []
    if "dataset" in fields:
        parts.append(DATASET_TITLES.get(fields["dataset"], fields["dataset"]))
    if "model" in fields:
        parts.append(fields["model"])
    if "n" in fields:
        parts.append(f"{fields['n']} forget samples")
    if "target" in fields:
        parts.append("refusal targets: " + ("idk (before self-improvement)" if fields["target"] == "idk"
                                            else f"{fields['target']} (after self-improvement)"
                                            if fields["target"] == "self-improve" else fields["target"]))
    if "merge" in fields:
        m, n = fields["merge"], fields.get("n")
        parts.append("no merging" if m == 1 else
                     f"{-(-n // m)} edits by merging {m} queries of {n} forget samples" if n else
                     f"merging {m} queries")
    return " — ".join(parts)


def model_titles(desc: dict, part: str = "main") -> dict:
    """Model name as the tables print it: with the paper's model it stands in for."""
    from .paper import PAPER_MODEL_NAMES

    exp = desc["parts"][part]
    paper = ", ".join(PAPER_MODEL_NAMES.get(m, m) for m in exp["paper_models"])
    return {m: (f"{m} (in place of the paper's {paper})" if exp["substituted"] and paper else m)
            for m in exp["models"]}


def source_note(desc: dict, part: str = "main") -> str:
    exp = desc["parts"][part]
    settings = dict.fromkeys((c["dataset"], c["setting"]) for c in exp["cells"] + exp["extras"])
    by_dataset: dict = {}
    for dataset, setting in settings:
        by_dataset.setdefault(dataset, []).append(setting)
    where = "; ".join(f"{d}: {', '.join(s)}" for d, s in by_dataset.items())
    note = (f"Model(s): {', '.join(model_titles(desc, part).values())}. Settings ({where}) from "
            f"results/<model>/<dataset>/<method>/<setting>/summary.json; seeds "
            f"{', '.join(map(str, desc['seeds']))}" + (" (mean over seeds)" if len(desc["seeds"]) > 1 else "")
            + ".")
    if exp["substituted"]:
        note += (" The paper's model is not among run.models, so this table shows the configured "
                 "model(s) instead.")
    return note


def footnotes(layout: Layout, rows: list[Row], desc: dict) -> list[str]:
    notes = []
    if layout.mark:
        notes.append("Bold: best unlearning and best editing method per column and block; "
                     "underlined: top 2 of all methods (full precision, ties share a mark). "
                     "↓ lower is better, ↑ higher is better.")
    else:
        notes.append("↓ lower is better, ↑ higher is better.")
    if any(r.grey for r in rows):
        notes.append(FOOTNOTE_MARKS)
    if desc.get("reference"):
        notes.append(f"{reference_label(desc)}: the starting model before unlearning (not ranked).")
    if layout.delta_vs:
        notes.append(f"In brackets: change vs the plain {layout.delta_vs} set (positive: the "
                     f"rephrased questions recover more of the answer).")
    notes += _nothing_to_lose(layout, rows)
    # A gap in the reference row only (Table 6 judges the unlearned models) gets its own note.
    methods = [r for r in rows if not r.reference]
    missing = sorted({c.group for c in layout.columns for r in methods if r.values.get(c.key) is None})
    if missing:
        notes.append(f"{MISSING}: not available ({', '.join(missing)}): "
                     + "; ".join(_missing_reason(g, methods) for g in missing) + ".")
    reference_only = sorted({c.group for c in layout.columns for r in rows
                             if r.reference and r.values.get(c.key) is None} - set(missing))
    if reference_only and desc.get("reference"):
        notes.append(f"{MISSING} in the {reference_label(desc)} row ({', '.join(reference_only)}): "
                     "measured on the unlearned models only.")
    return notes


def reference_label(desc: dict) -> str:
    """How tables and figures name the starting model's row (config `experiments.labels`)."""
    return desc["labels"].get(desc["reference"], desc["reference"])


def _nothing_to_lose(layout: Layout, rows: list[Row]) -> list[str]:
    """A kept-knowledge column (retain, locality) where the starting model already scores below the
    non-functional threshold cannot show harm: on the embedded model the PISTOL fine-tune leaves
    factual Rouge1 at 0.01, so Table 4's locality column would rank noise."""
    notes = []
    for col in layout.columns:
        if col.better != HIGHER or not col.key.endswith("_rouge1_recall"):
            continue
        start = [r.values[col.key] for r in rows if r.reference and r.values.get(col.key) is not None]
        if start and max(start) < NON_FUNCTIONAL_ROUGE1:
            notes.append(f"{col.group} {col.label}: the starting model already scores "
                         f"{_fmt(max(start))}, so there is nothing left for unlearning to harm and "
                         f"this column does not tell the methods apart.")
    return notes


def _missing_reason(group: str, rows: list[Row]) -> str:
    if group.startswith("Rephrased"):
        return "the rephrase split was not evaluated for these jobs"
    if group.startswith("Alignment") and any(r.values.get("judge_withheld") for r in rows):
        return ("the judge's verdicts could not be read for most answers (judge.json: "
                "reliable false), so its scores are withheld; the proxy rates stand")
    if group.startswith("Alignment"):
        return "no judge scores (judge.json) for these jobs"
    return f"{group}: missing from the summaries"


def render_markdown(layout: Layout, rows: list[Row], desc: dict, part: str = "main") -> str:
    lines = [f"# {layout.title}", "", source_note(desc, part), ""]
    for key, block_rows in blocks(rows, layout.block_by):
        lines += [f"### {block_title(key, layout)}", ""]
        header = ["Method"] + [_header(c) for c in layout.columns]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|" + "---:|" * len(layout.columns))
        for row in block_rows:
            cells = [f"*{row.label}*" if row.reference else _row_label(row)]
            for col in layout.columns:
                text = _cell_text(row, col, layout)
                marks = row.marks.get(col.key, ())
                if "bold" in marks:
                    text = f"**{text}**"
                if "underline" in marks:
                    text = f"<ins>{text}</ins>"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- {n}" for n in footnotes(layout, rows, desc)]
    return "\n".join(lines) + "\n"


def _header(col: Column) -> str:
    """One header row (Markdown has no column groups): 'Forget Rouge1↓'."""
    short = {"Forget set (reliability)": "Forget", "Retain set (locality)": "Retain",
             "Rephrased forget set (generalization)": "Rephrase", "Factual data (locality)": "Factual",
             "Alignment (judge)": ""}.get(col.group, col.group)
    return " ".join(p for p in (short, col.label + col.arrow) if p)


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("↓", r"$\downarrow$"), ("↑", r"$\uparrow$"), ("†", r"$^\dagger$"),
                 ("‡", r"$^\ddagger$"), ("—", "---"), ("–", "--")):
        text = text.replace(a, b)
    return text


def render_latex(layout: Layout, rows: list[Row], desc: dict, part: str = "main") -> str:
    cols = layout.columns
    ncol = len(cols) + 1
    groups: list[tuple[str, int]] = []
    for col in cols:
        if groups and groups[-1][0] == col.group:
            groups[-1] = (col.group, groups[-1][1] + 1)
        else:
            groups.append((col.group, 1))
    out = ["% " + layout.title, "% needs \\usepackage{booktabs,xcolor}",
           "\\begin{tabular}{l" + "r" * len(cols) + "}", "\\toprule"]
    out.append(" & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{_tex(g)}}}" for g, n in groups) + " \\\\")
    start = 2
    rules = []
    for _, n in groups:
        rules.append(f"\\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    out.append(" ".join(rules))
    out.append("Method & " + " & ".join(_tex(c.label + c.arrow) for c in cols) + " \\\\")
    for key, block_rows in blocks(rows, layout.block_by):
        out.append("\\midrule")
        out.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{_tex(block_title(key, layout))}}}}} \\\\")
        out.append("\\midrule")
        for row in block_rows:
            cells = [f"\\textit{{{_tex(row.label)}}}" if row.reference else _tex(_row_label(row))]
            for col in cols:
                text = _tex(_cell_text(row, col, layout))
                marks = row.marks.get(col.key, ())
                if "bold" in marks:
                    text = f"\\textbf{{{text}}}"
                if "underline" in marks:
                    text = f"\\underline{{{text}}}"
                cells.append(text)
            if row.grey:
                cells = [f"\\textcolor{{gray}}{{{c}}}" for c in cells]
            out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    out += [f"% {_tex(n)}" for n in [source_note(desc, part)] + footnotes(layout, rows, desc)]
    return "\n".join(out) + "\n"


def render_html(layout: Layout, rows: list[Row], desc: dict, part: str = "main") -> str:
    """A standalone page: what the Snakemake report shows inline (it embeds HTML, not CSV)."""
    esc = html.escape
    body = [f"<h2>{esc(layout.title)}</h2>", f"<p>{esc(source_note(desc, part))}</p>"]
    for key, block_rows in blocks(rows, layout.block_by):
        body.append(f"<h4>{esc(block_title(key, layout))}</h4><table>")
        body.append("<tr><th>Method</th>" + "".join(
            f"<th>{esc(_header(c))}</th>" for c in layout.columns) + "</tr>")
        for row in block_rows:
            cls = ' class="grey"' if row.grey else (' class="ref"' if row.reference else "")
            cells = [f"<td>{esc(row.label if row.reference else _row_label(row))}</td>"]
            for col in layout.columns:
                text = esc(_cell_text(row, col, layout))
                marks = row.marks.get(col.key, ())
                if "bold" in marks:
                    text = f"<b>{text}</b>"
                if "underline" in marks:
                    text = f"<u>{text}</u>"
                cells.append(f"<td>{text}</td>")
            body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
        body.append("</table>")
    body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in footnotes(layout, rows, desc)) + "</ul>")
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
             "td,th{padding:2px 6px;text-align:right;border-bottom:1px solid #ddd}"
             "td:first-child,th:first-child{text-align:left} tr.grey td{color:#999}"
             "tr.ref td{font-style:italic}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{esc(layout.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


CSV_FIELDS = ["table", "block", "model", "dataset", "n_forget", "target", "merge", "method", "label",
              "group", "seeds", "reference", "non_functional", "no_forgetting"]


def render_csv(name: str, layout: Layout, rows: list[Row], desc: dict, part: str = "main") -> str:
    value_keys = [c.key for c in layout.columns]
    if layout.delta_vs:
        value_keys += [f"delta_{c.key}" for c in layout.columns if c.key.startswith("rephrase_")]
    value_keys += ["combined_score"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS + value_keys, lineterminator="\n")
    writer.writeheader()
    for key, block_rows in blocks(rows, layout.block_by):
        for row in block_rows:
            record = {"table": name, "block": block_title(key, layout), "model": row.model,
                      "dataset": row.dataset, "n_forget": row.n, "target": row.target,
                      "merge": row.merge, "method": row.method, "label": row.label,
                      "group": row.group or "", "seeds": " ".join(map(str, row.seeds)),
                      "reference": int(row.reference), "non_functional": int(row.non_functional),
                      "no_forgetting": int(row.no_forgetting)}
            for k in value_keys:
                if k.startswith("delta_"):
                    col = k[len("delta_"):]
                    a, b = row.values.get(col), row.values.get(col.replace("rephrase_", f"{layout.delta_vs}_", 1))
                    value = None if a is None or b is None else a - b
                else:
                    value = row.values.get(k)
                record[k] = "" if value is None else repr(value)
            writer.writerow(record)
    return buffer.getvalue()


def make_table(name: str, desc: dict, outputs: dict, root: str = ".", judges=()) -> list[Row]:
    """Build one paper table; ``outputs`` maps csv/md/tex/html to paths."""
    layout = LAYOUTS[name]
    rows = build_rows(desc, "main", root, judges)
    if layout.mark:
        for _, block_rows in blocks(rows, layout.block_by):
            mark(block_rows, layout.columns)
    write_text(outputs["csv"], render_csv(name, layout, rows, desc))
    write_text(outputs["md"], render_markdown(layout, rows, desc))
    write_text(outputs["tex"], render_latex(layout, rows, desc))
    write_text(outputs["html"], render_html(layout, rows, desc))
    return rows


def base_models_table(summary_paths: list[str], csv_path: str, md_path: str) -> list[dict]:
    """One row per (model, dataset, setting, split) of the starting models, unlearning nothing."""
    rows = []
    for path in summary_paths:
        summary = read_json(path)
        for split, values in summary["splits"].items():
            rows.append({"model": summary["model"], "dataset": summary["dataset"],
                         "start": values.get("start", "base"),
                         "setting": summary["setting"], "split": split, "n": values["n"],
                         **{key: values[key] for key, _ in METRICS}})
    columns = ["model", "dataset", "start", "setting", "split", "n"] + [key for key, _ in METRICS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(csv_path, buffer.getvalue())

    header = ["Model", "Dataset", "Start", "Setting", "Split", "n"] + [label for _, label in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["dataset"], row["start"], row["setting"], row["split"], str(row["n"])]
        cells += [f"{row[key]:.3f}" for key, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nStarting models before unlearning (Start: the base model, or the base model "
            "fine-tuned on the dataset, as PISTOL requires). Rouge1 = ROUGE-1 recall of the greedy answer; "
            "Prob. = exp(mean answer-token log-probability); MRR and Hit-Rate (top-100) are "
            "teacher-forced over answer tokens.\n")
    write_text(md_path, "# Base models\n\n" + "\n".join(lines) + "\n" + note)
    return rows
