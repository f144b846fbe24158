from pathlib import Path

from editunlearn.data import load_refusals, make_idk_targets
from editunlearn.io import read_json, write_jsonl
from editunlearn.pipeline import job

with job(snakemake) as log:
    split = read_json(snakemake.input.split)
    refusals = load_refusals(Path(snakemake.input.refusals).parent)
    rows = make_idk_targets(split, refusals, int(snakemake.wildcards.seed))
    write_jsonl(snakemake.output[0], rows)
    log.info("%d refusal targets", len(rows))
