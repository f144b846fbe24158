# Datasets: pinned source files (mirror first, then download, sha256-checked), splits, targets.


# light steps: run by the main snakemake process, never submitted as cluster jobs
localrules:
    fetch_data,
    make_split,
    idk_targets,


rule fetch_data:
    output:
        "resources/data/{file}",
    wildcard_constraints:
        file="|".join(SOURCES),
    params:
        mirror=lambda w: (
            os.path.join(workflow.basedir, config["data"]["mirror"])
            if config["data"]["mirror"]
            else None
        ),
        download=config["data"]["download"],
    log:
        "logs/data/fetch_{file}.log",
    script:
        "../scripts/fetch_data.py"


rule make_split:
    input:
        qa=lambda w: f"resources/data/{DATASETS[w.dataset]}",
        factual="resources/data/factual_data.json",
    output:
        "resources/splits/{dataset}/n{n}_s{seed}.json",
    log:
        "logs/splits/{dataset}/n{n}_s{seed}.log",
    script:
        "../scripts/make_split.py"


rule idk_targets:
    input:
        split="resources/splits/{dataset}/n{n}_s{seed}.json",
        refusals="resources/data/idontknow.jsonl",
    output:
        "resources/targets/{dataset}/n{n}_s{seed}/idk.jsonl",
    log:
        "logs/targets/{dataset}/n{n}_s{seed}_idk.log",
    script:
        "../scripts/idk_targets.py"
