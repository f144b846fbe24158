from editunlearn.models import convert_gguf, download_hub_model, embedded_gguf_path
from editunlearn.pipeline import job

with job(snakemake) as log:
    entry = snakemake.params.entry
    out = snakemake.output[0]
    if entry["source"] == "gguf_wheel":
        gguf = embedded_gguf_path(entry["gguf_file"])
        log.info("converting %s -> %s", gguf, out)
        convert_gguf(gguf, out)
    elif entry["source"] == "hub":
        log.info("downloading %s -> %s", entry["hub_id"], out)
        download_hub_model(entry["hub_id"], out, entry.get("revision"))
    else:
        raise ValueError(f"model source {entry['source']!r} needs no preparation; "
                         f"set its `path` to an existing model folder")
