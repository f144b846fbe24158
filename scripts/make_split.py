from pathlib import Path

from editunlearn.data import make_split, write_split
from editunlearn.pipeline import job

with job(snakemake) as log:
    w = snakemake.wildcards
    split = make_split(w.dataset, int(w.n), int(w.seed), Path(snakemake.input.qa).parent)
    write_split(snakemake.output[0], split)
    log.info("%s: forget %d, retain %d", w.dataset, split["n_forget"], split["n_retain"])
