"""When does Snakemake start a job that needs more threads than the jobs around it?

    .venv/bin/python benchmarks/thread_starvation.py [--cores 2] [--small 8] [--seconds 4]

A toy workflow of sleeping jobs, run with the installed Snakemake: `--small` 1-thread jobs ready
from the start, and a "long" job (standing for the PISTOL fine-tune) that becomes ready after a
short 1-thread job. It runs three times: the long job on 2 threads, on 2 threads with a higher
`priority:`, and on 1 thread with that priority. Prints, per variant, when the long job started
and when the last small job ended (seconds from the start). The pipeline's choice (rules/common.smk,
CRITICAL_PATH_PRIORITY) follows from it: Snakemake reserves no cores, so a job that needs 2 free
cores waits until no 1-thread job is left to start.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SNAKEFILE = """
rule all:
    input: expand("out/small{{i}}", i=range({small})), "out/long"
rule small:
    output: "out/small{{i}}"
    shell: "sleep {seconds}; date +%s.%N > {{output}}"
rule prepare:
    output: "out/prepare"
    shell: "sleep 1; touch {{output}}"
rule long:
    input: "out/prepare"
    output: "out/long"
    threads: {threads}
    priority: {priority}
    shell: "date +%s.%N > {{output}}.start; sleep {seconds}; touch {{output}}"
"""


def run(variant: dict, args) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Snakefile").write_text(SNAKEFILE.format(small=args.small, seconds=args.seconds, **variant))
        start = time.time()
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--quiet", "all"],
                       cwd=tmp, check=True, capture_output=True)
        long_start = float(Path(tmp, "out/long.start").read_text()) - start
        last_small = max(float(p.read_text()) for p in Path(tmp, "out").glob("small*")) - start
        return long_start, last_small


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--small", type=int, default=8, help="1-thread jobs ready from the start")
    parser.add_argument("--seconds", type=float, default=4, help="how long each job sleeps")
    args = parser.parse_args()
    print(f"{args.cores} cores, {args.small} small 1-thread jobs of {args.seconds:g} s\n")
    print("| long job | starts at (s) | last small job ends at (s) |\n|---|---:|---:|")
    for label, variant in (("2 threads", {"threads": 2, "priority": 0}),
                           ("2 threads, priority 10", {"threads": 2, "priority": 10}),
                           ("1 thread, priority 10", {"threads": 1, "priority": 10})):
        long_start, last_small = run(variant, args)
        print(f"| {label} | {long_start:.1f} | {last_small:.1f} |")


if __name__ == "__main__":
    main()
