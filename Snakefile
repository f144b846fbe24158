# editunlearn: knowledge editing methods as LLM unlearning baselines (Li et al., 2025), end to end.
# `snakemake --cores all` builds every table and figure (config `experiments.build`) and the jobs of
# the `run:` block; see README.md.

import os
import sys

# the editunlearn package, also when not pip-installed: here and in every job's script
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)

from editunlearn.config import ConfigError, validate_config


# the shipped defaults; `--configfile my.yaml` is merged on top of them
configfile: os.path.join(workflow.basedir, "config.yaml")


try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/finetune.smk"
include: "rules/stats.smk"
include: "rules/generate.smk"
include: "rules/unlearn.smk"
include: "rules/evaluate.smk"
include: "rules/judge.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


# `snakemake --report report.html`: every table and figure, captioned (report/*.rst)
report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        "results/tables/base_models.csv",
        "results/tables/base_models.md",
        all_setting_summaries(),
        all_judge_summaries(),
        all_experiment_outputs(),  # every table and figure of experiments.build


# `snakemake --report report.html built`: the report of every table and figure whose files exist,
# whichever runs made them (`make reproduce` ends with it).
rule built:
    input:
        built_experiment_outputs(),
