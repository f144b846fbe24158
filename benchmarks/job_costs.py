"""Wall time, CPU time and peak memory of every pipeline job that has run, from the files that
Snakemake's `benchmark:` directive writes under results/benchmarks/.

    .venv/bin/python benchmarks/job_costs.py [--rule unlearn] [--model smollm2-135m]

Prints one Markdown table, one row per job (rule, then the job's wildcards as path parts). Run the
jobs first, e.g. `snakemake --cores all` with the methods of interest in run.methods; each job's
figures are measured by Snakemake itself while it runs (mean_load > 100% x threads means other
processes competed for the CPU, so read the wall time with that in mind).
"""

import argparse
import csv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def last_run(path: Path) -> dict | None:
    """The last measurement in one job's benchmark file (Snakemake rewrites it on each run), None if none."""
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return rows[-1] if rows else None


def read_rows(root: Path):
    for path in sorted(root.rglob("*.tsv")):
        if (row := last_run(path)) is not None:
            parts = path.relative_to(root).with_suffix("").parts
            yield parts[0], "/".join(parts[1:]), row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(REPO / "results/benchmarks"))
    parser.add_argument("--rule", help="only this rule (e.g. unlearn, evaluate, finetune)")
    parser.add_argument("--model", help="only jobs whose path contains this model name")
    args = parser.parse_args()
    print("| rule | job | wall s | CPU s | peak RSS GB | mean load % |")
    print("|---|---|---:|---:|---:|---:|")
    for rule, job, row in read_rows(Path(args.root)):
        if (args.rule and rule != args.rule) or (args.model and args.model not in job.split("/")):
            continue
        print(f"| {rule} | {job} | {float(row['s']):.0f} | {float(row['cpu_time']):.0f} | "
              f"{float(row['max_rss']) / 1024:.2f} | {float(row['mean_load']):.0f} |")


if __name__ == "__main__":
    main()
