"""The paper's Figures 3-6 from job summaries, as PNG and PDF at paper column width (3.4 in).

Each figure draws the first model of its grid (the paper's figures are Llama2-7B only) and says
which model that is; values are means over seeds, as in the tables.
"""

from __future__ import annotations

import math
import textwrap
import zlib

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .experiments import Cell  # noqa: E402
from .settings import SELF_IMPROVE_TARGET  # noqa: E402
from .io import atomic_path, read_jsonl, write_text  # noqa: E402
from .tables import build_rows, model_titles, reference_label  # noqa: E402

WIDTH = 3.4  # inches: one column of a two-column paper
STYLE = {"font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 6.5,
         "ytick.labelsize": 6.5, "legend.fontsize": 6, "axes.spines.top": False,
         "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 300}
# one colour per method, stable across figures (tab10 order; KL dark indigo, not grey: grey
# dashes are the starting model)
COLOURS = {"ga": "#8c564b", "gd": "#1f77b4", "kl": "#393b79", "dpo": "#ff7f0e", "npo": "#bcbd22",
           "idk_dpo": "#17becf", "rome": "#9467bd", "memit": "#e377c2", "grace": "#2ca02c",
           "wise": "#d62728", "alphaedit": "#000000"}
DATASET_COLOURS = {"factual": "#4c72b0", "pistol": "#dd8452"}
# a method added by the user: tab20's light tones, picked by name so it keeps its colour
EXTRA_COLOURS = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
                 "#dbdb8d", "#9edae5"]


def _colour(method):
    if method in COLOURS:
        return COLOURS[method]
    return EXTRA_COLOURS[zlib.crc32(method.encode()) % len(EXTRA_COLOURS)]


def save(fig, png: str, pdf: str) -> None:
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        with atomic_path(path) as tmp:
            # no creation date: the same inputs give the same PDF
            fig.savefig(tmp, format=fmt, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
    plt.close(fig)


def _first_model(desc, part="main"):
    exp = desc["parts"][part]
    model = exp["models"][0]
    return model, model_titles(desc, part)[model]


def _method_rows(rows, model):
    return [r for r in rows if not r.reference and r.model == model]


def _label(row, show_target=False):
    if show_target and row.target != "idk":
        return f"{row.label} ({row.target})"
    return row.label


def _no_data(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=6.5, color="#777")


# ---------------------------------------------------------------- Figure 3


def _reference_entry(desc) -> str:
    """The legend entry of the starting model's dashed line (Figs. 3 and 4)."""
    return f"{reference_label(desc)} (before unlearning)"


def fig3(desc, png, pdf, root="."):
    """Forget (1 - Rouge1) and retain (Rouge1) against the number of forget samples."""
    rows = build_rows(desc, "main", root)
    model, title = _first_model(desc)
    # the starting model at each size: what "kept the retain set" and "forgot" are measured against
    references = [r for r in rows if r.reference and r.model == model]
    reference = _reference_entry(desc)
    rows = _method_rows(rows, model)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 1, figsize=(WIDTH, 3.6), sharex=True)
        for ax, key, ylabel, invert in ((axes[0], "forget_rouge1_recall", "Forget: 1 − Rouge1", True),
                                        (axes[1], "retain_rouge1_recall", "Retain: Rouge1", False)):
            pts = sorted((r.n, r.values.get(key)) for r in references if r.values.get(key) is not None)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, [1 - y for y in ys] if invert else ys, color="#777", ls="--", lw=0.8, zorder=3,
                        label=reference)
            for method in dict.fromkeys(r.method for r in rows):
                pts = sorted((r.n, r.values.get(key)) for r in rows if r.method == method
                             and r.values.get(key) is not None)
                if pts:
                    xs, ys = zip(*pts)
                    ys = [1 - y for y in ys] if invert else ys
                    label = next(r.label for r in rows if r.method == method)
                    ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=_colour(method), label=label)
            ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3, lw=0.5)
        axes[1].set_xlabel("Number of forget samples")
        axes[1].set_xticks(sorted({r.n for r in rows}))
        # the methods on one row above; the starting model's dashed line labelled apart, where
        # it is clear of the lines (five entries in four columns read out of order)
        entries = dict(zip(*reversed(axes[0].get_legend_handles_labels())))  # label -> line
        base = entries.pop(reference, None)
        if entries:
            axes[0].legend(entries.values(), entries.keys(), ncol=min(4, len(entries)),
                           loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
        if base is not None:
            axes[1].legend([base], [reference], loc="best", frameon=False)
        fig.suptitle(f"Number of forget samples\n{title}", fontsize=7, y=1.06)
        save(fig, png, pdf)


# ---------------------------------------------------------------- Figure 4


def fig4(desc, png, pdf, root="."):
    """Top: 1 - Rouge1@Forget + Rouge1@Retain per method and dataset; bottom: radar of Forget,
    Rephrase and Retain on the first dataset."""
    exp = desc["parts"]["main"]
    rows = build_rows(desc, "main", root)
    model, title = _first_model(desc)
    mine = [r for r in rows if r.model == model]
    datasets = list(dict.fromkeys(r.dataset for r in mine if not r.reference))
    methods = list(dict.fromkeys(r.method for r in mine if not r.reference))
    radar = exp["grid"].get("radar") or methods[:4]
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(WIDTH, 5.2))
        ax = fig.add_axes([0.12, 0.63, 0.86, 0.30])
        width = 0.8 / max(1, len(datasets))
        for i, dataset in enumerate(datasets):
            labelled = False  # the dataset's legend entry rides on its first drawn bar
            for j, method in enumerate(methods):
                row = next((r for r in mine if r.dataset == dataset and r.method == method and not r.reference), None)
                value = row and row.values.get("combined_score")
                if value is None:
                    continue
                ax.bar(j + (i - (len(datasets) - 1) / 2) * width, value, width, color=DATASET_COLOURS.get(dataset),
                       hatch="////" if row.grey else None, edgecolor="white" if not row.grey else "#333",
                       lw=0.3, label=None if labelled else dataset)
                labelled = True
            ref = next((r for r in mine if r.dataset == dataset and r.reference), None)
            if ref and ref.values.get("combined_score") is not None:
                ax.axhline(ref.values["combined_score"], color=DATASET_COLOURS.get(dataset), ls="--", lw=0.8)
        labels = [next(r.label for r in mine if r.method == m) for m in methods]
        ax.set_xticks(range(len(methods)), labels, rotation=45, ha="right")
        ax.set_ylabel("1 − R1@Forget + R1@Retain")
        ax.set_ylim(0, 2.5)  # scores lie in [0, 2]; the band above holds the legend, clear of the bars
        ax.set_yticks([0, 0.5, 1, 1.5, 2])
        ax.grid(axis="y", alpha=0.3, lw=0.5)
        handles, names = ax.get_legend_handles_labels()
        if desc.get("reference"):
            handles.append(Line2D([], [], color="#555", ls="--", lw=0.8))
            names.append(_reference_entry(desc))
        if any(r.grey for r in mine):
            handles.append(Patch(facecolor="white", edgecolor="#333", hatch="////", lw=0.3))
            names.append("non-functional / no forgetting")
        ax.legend(handles, names, ncol=2, loc="upper left", frameon=False)
        ax.set_title(f"Combined score (higher is better)\n{title}", fontsize=6.5)

        pax = fig.add_axes([0.2, 0.07, 0.6, 0.32], projection="polar")
        first = datasets[0] if datasets else None
        axes_names = ["Forget\n(1 − R1)", "Rephrase\n(1 − R1)", "Retain (R1)"]
        angles = [math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        missing_rephrase = True
        for method in radar:
            row = next((r for r in mine if r.dataset == first and r.method == method and not r.reference), None)
            if row is None:
                continue
            f, rp, rt = (row.values.get(k) for k in ("forget_rouge1_recall", "rephrase_rouge1_recall",
                                                     "retain_rouge1_recall"))
            missing_rephrase &= rp is None
            vals = [1 - f if f is not None else 0, 1 - rp if rp is not None else 0, rt or 0]
            pax.plot(angles + angles[:1], vals + vals[:1], color=_colour(method), lw=1.2, label=row.label)
            pax.fill(angles + angles[:1], vals + vals[:1], color=_colour(method), alpha=0.08)
        pax.set_xticks(angles, [n + ("\n(not evaluated)" if n.startswith("Rephrase") and missing_rephrase else "")
                                for n in axes_names])
        pax.tick_params(axis="x", pad=7)  # the axis names clear the outer ring and its spokes
        pax.set_ylim(0, 1)
        pax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "0.5", "", "1"], fontsize=5.5)
        pax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
        pax.set_title(f"Forget, Rephrase, Retain on {first} (higher is better)", fontsize=6.5, pad=12)
        save(fig, png, pdf)


# ---------------------------------------------------------------- Figure 5


FELL_BACK = "fell back to idk"


def case_study(desc, root="."):
    """[(question, answer, [(label, generation)])] for the `questions` forget questions the
    starting model answered best (highest Rouge1; ties by dataset order), or the first ones
    where the tables have no starting-model row (``experiments.reference: null``). A
    self-improve job's label says where the model wrote no valid target for the question and the
    idk one stood in (then its answer is the idk job's, not a test of self-improvement)."""
    exp = desc["parts"]["main"]
    model, _ = _first_model(desc)
    cells = [c for c in exp["cells"] if c["model"] == model]
    first = cells[0]
    seed = first["seed"]
    k = exp["grid"].get("questions", 2)
    rows = []  # (label, {id: record}, {id: the label where that row's target fell back})
    if desc["reference"]:
        base = Cell(model, first["dataset"], first["n"], seed, desc["reference"])
        records = read_jsonl(f"{root}/{base.records('forget')}")
        rows.append((desc["labels"].get(base.method, base.method), {r["id"]: r for r in records}, {}))
        ranked = sorted(range(len(records)), key=lambda i: (-records[i].get("rouge1_recall", 0), i))
        chosen = [records[i] for i in ranked[:k]]
    else:
        chosen = read_jsonl(f"{root}/{Cell(**_cell_fields(first)).records('forget')}")[:k]
    for c in cells:
        if c["seed"] != seed or c["dataset"] != first["dataset"] or c["n"] != first["n"]:
            continue
        cell = Cell(**_cell_fields(c))
        method = desc["labels"].get(cell.method, cell.method)
        label = method + (f" ({cell.target})" if cell.target != "idk" else "")
        relabel = ({t["id"]: f"{method} ({cell.target}, {FELL_BACK})"
                    for t in read_jsonl(f"{root}/{cell.targets}") if t.get("fallback")}
                   if cell.target == SELF_IMPROVE_TARGET else {})
        rows.append((label, {r["id"]: r for r in read_jsonl(f"{root}/{cell.records('forget')}")}, relabel))
    return [(q["question"], q["answer"],
             [(relabel.get(q["id"], label), recs.get(q["id"], {}).get("generation", "–"))
              for label, recs, relabel in rows]) for q in chosen]


def _cell_fields(c: dict) -> dict:
    return {k: c[k] for k in ("model", "dataset", "n", "seed", "method", "target", "merge")}


def fig5(desc, png, pdf, md, root="."):
    """Case study: question, ground truth and each method's answer after unlearning."""
    model, title = _first_model(desc)
    cases = case_study(desc, root)
    wrap = 60
    lines = []  # (text, weight, indent)
    md_lines = [f"# Case study: {title}", ""]
    for question, answer, answers in cases:
        lines += [(line, "bold", 0) for line in textwrap.wrap(f"Q: {question}", wrap)]
        lines += [(line, "normal", 0) for line in textwrap.wrap(f"Ground truth: {answer}", wrap)]
        md_lines += [f"**Q: {question}**", "", f"Ground truth: {answer}", "", "| Method | Answer |", "|---|---|"]
        for label, generation in answers:
            text = " ".join(generation.split()) or "(empty)"
            wrapped = textwrap.wrap(f"{label}: {text}", wrap - 2) or [f"{label}:"]
            lines += [(wrapped[0], "normal", 1)] + [(w, "normal", 2) for w in wrapped[1:]]
            md_lines.append(f"| {label} | {text.replace('|', '/')} |")
        lines.append(("", "normal", 0))
        md_lines.append("")
    with plt.rc_context(STYLE):
        line_h = 6.5 * 1.35 / 72
        lines = [(t, "bold", 0) for t in textwrap.wrap(f"Case study: {title}", wrap - 6)] + [("", "normal", 0)] + lines
        height = 0.2 + line_h * len(lines)
        fig = plt.figure(figsize=(WIDTH, height))
        y = 1 - 0.1 / height + line_h / height
        for text, weight, indent in lines:
            y -= line_h / height
            fig.text(0.01 + 0.03 * indent, y, text, fontsize=6.5, weight=weight, va="top", family="DejaVu Sans")
        save(fig, png, pdf)
    write_text(md, "\n".join(md_lines) + "\n")


# ---------------------------------------------------------------- Figure 6


def _paired_bars(ax, xs, rows, colours, keys):
    """Two bars per row (full and pale shade of the method's colour), legend once per key."""
    width = 0.38
    for k, ((key, name), shade) in enumerate(zip(keys, (1.0, 0.45))):
        labelled = False
        for x, r, c in zip(xs, rows, colours):
            v = r.values.get(key)
            if v is not None:
                ax.bar(x + (k - 0.5) * width, v, width, color=c, alpha=shade, edgecolor="white", lw=0.3,
                       label=None if labelled else name)
                labelled = True
    ax.legend(frameon=False, loc="upper left", ncol=2)


def fig6(desc, png, pdf, root=".", judges=()):
    """Left: self-improvement (rephrase 1 - Rouge1; the judge's entailment and trustworthiness,
    1-5, or where the judge's scores are withheld or absent its proxy rates).
    Right: combined score against the number of questions merged per edit. Returns what the
    alignment panel shows: "judge", "proxies" or None."""
    left = build_rows(desc, "left", root, judges)
    right = build_rows(desc, "right", root)
    model, title = _first_model(desc, "left")
    rmodel, rtitle = _first_model(desc, "right")
    left = _method_rows(left, model)
    with plt.rc_context(STYLE):
        # constrained layout: each gap as wide as its own labels need (tight_layout: all as the widest)
        fig, axes = plt.subplots(3, 1, figsize=(WIDTH, 6.4), gridspec_kw={"height_ratios": [1, 1, 1.3]},
                                 layout="constrained")
        names = [_label(r, show_target=True) for r in left]
        xs = range(len(left))
        colours = [_colour(r.method) for r in left]
        hatches = ["////" if r.target != "idk" else None for r in left]
        ax = axes[0]
        vals = [r.values.get("rephrase_rouge1_recall") for r in left]
        if any(v is not None for v in vals):
            for x, v, c, h in zip(xs, vals, colours, hatches):
                if v is not None:
                    ax.bar(x, 1 - v, color=c, hatch=h, edgecolor="white", lw=0.3)
        else:
            _no_data(ax, "rephrase split not evaluated")
        ax.set_ylabel("Rephrase: 1 − Rouge1")
        ax.set_ylim(0, 1)
        ax.set_xticks(list(xs), [])  # the same bars as the panel below, which names them
        ax.set_title(f"Self-improvement (hatched: self-improved targets)\n{title}", fontsize=6.5)
        ax = axes[1]
        judged = any(r.values.get(k) is not None for r in left
                     for k in ("semantic_entailment", "trustworthiness"))
        proxied = any(r.values.get(k) is not None for r in left
                      for k in ("entity_mention_rate", "refusal_rate"))
        if judged:
            _paired_bars(ax, xs, left, colours, (("semantic_entailment", "Entailment"),
                                                 ("trustworthiness", "Trustworthiness")))
            ax.set_ylabel("Judge score (1–5)")
            ax.set_ylim(0, 6.3)  # room for the legend above 5
            ax.set_yticks([1, 2, 3, 4, 5])
        elif proxied:
            # Without readable judge verdicts, the judge's deterministic proxies (judge.json proxy).
            _paired_bars(ax, xs, left, colours, (("entity_mention_rate", "Entity mention (≈ entailment)"),
                                                 ("refusal_rate", "Refusal rate")))
            ax.set_ylabel("Proxy rate")
            ax.set_ylim(0, 1.3)
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
            withheld = any(r.values.get("judge_withheld") for r in left)
            ax.set_title("judge scores withheld (unreadable verdicts): proxies shown" if withheld
                         else "no judge scores: proxies shown", fontsize=6, color="#555")
        else:
            _no_data(ax, "no judge scores (judge.json) for these jobs")
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax = axes[2]
        right_rows = _method_rows(right, rmodel)
        merged = [r for r in right_rows if r.method in (desc["parts"]["right"]["grid"].get("methods") or [])]
        for method in dict.fromkeys(r.method for r in merged):
            pts = sorted((r.merge, r.values.get("combined_score")) for r in merged
                         if r.method == method and r.values.get("combined_score") is not None)
            if pts:
                mx, my = zip(*pts)
                ax.plot(mx, my, marker="o", ms=3, lw=1.2, color=_colour(method),
                        label=next(r.label for r in merged if r.method == method))
        for r in right_rows:
            if r.method in (desc["parts"]["right"]["grid"].get("references") or []) and r.merge == 1 \
                    and r.values.get("combined_score") is not None:
                ax.axhline(r.values["combined_score"], color=_colour(r.method), ls="--", lw=0.8,
                           label=f"{r.label} (no merging)")
        merges = sorted({r.merge for r in merged})
        if merges:
            ax.set_xticks(merges)
        ax.set_xlabel("Forget questions merged into one edit")
        ax.set_ylabel("1 − R1@Forget + R1@Retain")
        ax.set_ylim(0, 2)
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25), fontsize=5.5)
        n = right_rows[0].n if right_rows else "?"
        ax.set_title(f"Query merging, {n} forget samples\n{rtitle}", fontsize=6.5)
        save(fig, png, pdf)
    return "judge" if judged else "proxies" if proxied else None
