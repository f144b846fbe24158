from pathlib import Path

from editunlearn.data import fetch
from editunlearn.pipeline import job

with job(snakemake) as log:
    out = Path(snakemake.output[0])
    origin = fetch(out.name, out, snakemake.params.mirror, snakemake.params.download)
    log.info("%s <- %s (sha256 verified)", out, origin)
