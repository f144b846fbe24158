"""What building a table or figure from scratch costs, from the costs Snakemake measured for its jobs.

    .venv/bin/python benchmarks/target_cost.py table1 fig4 [--cores 2] [--configfile my.yaml]

For each target, a forced dry run lists every job it needs from a clean clone (data, model, key
statistics, fine-tune, unlearning, evaluations). Each job's CPU time comes from the file its
`benchmark:` directive wrote under results/benchmarks/ when it last ran here; a job that has not
run yet is estimated by the median of measured jobs of the same rule, dataset and method (same
split for evaluations; per forget item for unlearning and forget-set evaluations), else the same
rule, dataset and split, and counted as unknown otherwise. Jobs
without a `benchmark:` (data, splits, tables) take seconds and count as 0. Wall time on `--cores`
is given as CPU / cores: the floor when every core is kept busy; chains such as fine-tune ->
unlearn -> evaluate can make it longer.
"""

import argparse
import re
import statistics
import subprocess
import sys
from collections import defaultdict

from job_costs import REPO, last_run


def planned_jobs(target: str, configfiles: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--nolock", "--cores", "1"]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    out = subprocess.run([*cmd, "--", target], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"dry run of {target} failed:\n{out.stderr[-2000:]}")
    jobs, job = [], None
    for line in (out.stdout + out.stderr).splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            job = {"rule": m.group(1)}
            jobs.append(job)
        elif job is not None and (m := re.match(r"\s+(benchmark|wildcards): (.*)$", line)):
            job[m.group(1)] = m.group(2)
    return jobs


def measured_cpu(benchmark: str):
    row = last_run(REPO / benchmark)
    return float(row["cpu_time"]) if row else None


def job_keys(job: dict) -> list[tuple]:
    """From the most to the least specific: the keys a job's cost is estimated by. The split stays
    in every key: forget-set costs are kept per forget item, the other splits' per job, and a
    key that pooled them would mix the two units."""
    wc = wildcards(job)
    rule, dataset, split = job["rule"], wc.get("dataset"), wc.get("split")
    return [(rule, dataset, wc.get("method"), split), (rule, dataset, split)]


def wildcards(job: dict) -> dict:
    return dict(kv.split("=", 1) for kv in job.get("wildcards", "").split(", ") if "=" in kv)


def forget_size_scale(job: dict) -> float:
    """Unlearning and forget-set evaluations cost in proportion to the forget size N (setting
    n<N>_...), so estimates are kept per forget item; other jobs do not depend on it."""
    wc = wildcards(job)
    m = re.match(r"n(\d+)_", wc.get("setting", ""))
    if m and (job["rule"] == "unlearn" or wc.get("split") == "forget" or job["rule"] == "evaluate_rephrase"):
        return float(m.group(1))
    return 1.0


def estimate(plans: dict[str, list[dict]]) -> dict[str, dict]:
    """Per target: measured and estimated CPU seconds, per-rule CPU seconds and the rules of the
    jobs nothing could estimate. Each job carries its measured `cpu` (None: not run here yet);
    every measured job of every plan feeds the estimates of the unmeasured ones."""
    samples = defaultdict(list)
    for jobs in plans.values():
        for job in jobs:
            if job["cpu"] is not None and "benchmark" in job:
                for key in job_keys(job):
                    samples[key].append(job["cpu"] / forget_size_scale(job))
    out = {}
    for target, jobs in plans.items():
        cost = {"measured": 0.0, "estimated": 0.0, "unknown": [], "per_rule": defaultdict(float)}
        for job in jobs:
            if job["cpu"] is not None:
                cost["measured"] += job["cpu"]
                cost["per_rule"][job["rule"]] += job["cpu"]
                continue
            key = next((k for k in job_keys(job) if samples.get(k)), None)
            if key is None:
                cost["unknown"].append(job["rule"])
                continue
            guess = statistics.median(samples[key]) * forget_size_scale(job)
            cost["estimated"] += guess
            cost["per_rule"][job["rule"]] += guess
        out[target] = cost
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--configfile", action="append", default=[], help="passed to snakemake (repeatable)")
    parser.add_argument("--by-rule", action="store_true", help="also each target's CPU hours per rule")
    args = parser.parse_args()

    plans = {t: planned_jobs(t, args.configfile) for t in args.targets}
    for jobs in plans.values():
        for job in jobs:
            job["cpu"] = measured_cpu(job["benchmark"]) if "benchmark" in job else 0.0
    costs = estimate(plans)
    print(f"| target | jobs | measured CPU h | estimated CPU h | unknown jobs | total CPU h | wall h on {args.cores} cores (floor) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for target, cost in costs.items():
        unknown = cost["unknown"]
        total = cost["measured"] + cost["estimated"]
        print(f"| {target} | {len(plans[target])} | {cost['measured'] / 3600:.2f} | {cost['estimated'] / 3600:.2f} | "
              f"{len(unknown)}{' (' + ', '.join(sorted(set(unknown))) + ')' if unknown else ''} | "
              f"{total / 3600:.2f} | {total / 3600 / args.cores:.2f} |")
    if args.by_rule:
        for target, cost in costs.items():
            print(f"\n{target}: " + ", ".join(f"{rule} {cpu / 3600:.2f} h" for rule, cpu in
                                            sorted(cost["per_rule"].items(), key=lambda kv: -kv[1]) if cpu))


if __name__ == "__main__":
    main()
