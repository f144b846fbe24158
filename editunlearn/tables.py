"""Tables from job summaries: CSV at full precision, Markdown for reading."""

from __future__ import annotations

import csv
import io

from .io import read_json, write_text

METRICS = [("rouge1_recall", "Rouge1"), ("prob", "Prob."), ("mrr", "MRR"), ("hit_rate", "Hit-Rate")]


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
