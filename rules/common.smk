# Helpers shared by the rules: paths, the job grid and config look-ups.

import os

from editunlearn.config import method_hparams
from editunlearn.data import DATASETS, SOURCES
from editunlearn.methods import method_code_files
from editunlearn import evaluate as evaluate_module
from editunlearn import metrics as metrics_module
from editunlearn import finetune as finetune_module
from editunlearn.models import ModelSpec
from editunlearn.resources import job_resources
from editunlearn.settings import SELF_IMPROVE_TARGET, SETTING_RE, Setting


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9.\-]*",
    dataset="|".join(DATASETS),
    method=r"[a-z][a-z0-9_]*",
    setting=SETTING_RE,
    split=r"forget|retain|locality|rephrase",
    n=r"\d+",
    seed=r"\d+",


RESULTS = "results"
FINETUNE_MODULE = finetune_module.__file__
# The long jobs many others wait for (the PISTOL fine-tune, the key corpus, the rephrases) start
# first when a core frees. Snakemake reserves no cores: a job asking for more threads than are
# free at that moment waits behind any number of smaller ready jobs, so these ask for no more
# threads than the rest of their model's jobs (config `resources:`).
CRITICAL_PATH_PRIORITY = 10


def _model_job_value(group, key):
    def value(wildcards):
        return job_resources(config, wildcards.model, group)[key]

    return value


def model_job_threads(group):
    """CPU cores of a model job (group: finetune, unlearn or evaluate), from the config's
    `resources:` block, per model size class; capped by --cores."""
    return _model_job_value(group, "threads")


def model_job_resources(group):
    """gpu, mem_mb, runtime (minutes) and gpu_model (unset: None) of a model job, for
    `resources: **model_job_resources(g)`: what a SLURM job asks for (profiles/slurm) and what
    `--resources gpu=N` counts locally. Not params: changing them reruns nothing."""
    return {key: _model_job_value(group, key) for key in ("gpu", "mem_mb", "runtime", "gpu_model")}


def model_spec(model):
    return ModelSpec.from_config(model, config["models"][model])


def model_dir(model):
    return model_spec(model).path


def start_inputs(w):
    """The model a dataset's jobs start from: the base model folder, plus the fine-tune patch for
    datasets with a fine-tuning stage (finetune.datasets; the paper: PISTOL)."""
    inputs = {"model": model_dir(w.model)}
    if w.dataset in config["finetune"]["datasets"]:
        inputs["start_patch"] = f"resources/finetuned/{w.model}/{w.dataset}.patch.safetensors"
    return inputs


def finetune_hparams(model):
    block = config["finetune"]
    return {**block["hparams"], **block["per_model"].get(model, {})}


def code_inputs(paths):
    """Library files as job inputs, relative to the working directory: Snakemake records input
    paths, so absolute ones would rerun every job once the checkout moves."""
    return [os.path.relpath(os.path.abspath(p)) for p in paths]


def finetune_code_files():
    return code_inputs(method_code_files("finetune", module_path=FINETUNE_MODULE))


def evaluation_code_files():
    """The evaluation engine and the metrics: editing them re-evaluates every job. Not their
    imports: a change to training.py or an adaptor reaches evaluations through the new patch of
    the methods that use it, so the other methods' evaluations stay."""
    return code_inputs([evaluate_module.__file__, metrics_module.__file__])


def spec_params(model, evaluates=False):
    """The model settings a job depends on (params, so a change reruns exactly those jobs).
    `eval_batch_size` only where the job evaluates (evaluations, the fine-tune's gate): retuning
    it for speed must not redo the unlearning."""
    spec = model_spec(model)
    keys = ["name", "chat_template", "system_prompt", "num_layers", "modules", "dtype", "pad_token"]
    return {k: getattr(spec, k) for k in keys + (["eval_batch_size"] if evaluates else [])}


def eval_splits(dataset):
    """forget, retain, PISTOL's locality, and the rephrased forget questions where the config's
    `rephrase.datasets` asks for them (rules/generate.smk)."""
    return (["forget", "retain"] + (["locality"] if dataset == "pistol" else [])
            + (["rephrase"] if dataset in config["rephrase"]["datasets"] else []))


def targets_file(w):
    """Refusal targets of the forget items, of the kind the setting names (default idk)."""
    return Setting.parse(w.setting).targets_path(w.dataset, w.model)


def job_dir(w):
    return f"{RESULTS}/{w.model}/{w.dataset}/{w.method}/{w.setting}"


def run_settings(dataset, method=None):
    """The settings `snakemake` runs: each forget size and seed, and for the methods listed in
    `self_improve.methods` the same again with self-improved refusal targets."""
    settings = [f"n{n}_s{s}" for n in config["run"]["forget_sizes"][dataset] for s in config["run"]["seeds"]]
    if method in config["self_improve"]["methods"]:
        settings += [f"{s}_t{SELF_IMPROVE_TARGET}" for s in settings]
    return settings


def setting_files(methods, name="summary.json", datasets=None):
    run = config["run"]
    return [
        f"{RESULTS}/{model}/{dataset}/{method}/{setting}/{name}"
        for model in run["models"]
        for dataset in run["datasets"]
        if datasets is None or dataset in datasets
        for method in methods
        for setting in run_settings(dataset, method)
    ]


def setting_summaries(methods):
    return setting_files(methods)


def all_setting_summaries():
    return setting_summaries(config["run"]["methods"])


def all_judge_summaries():
    """The judge's summary of every job on the datasets in `judge.datasets` (rules/judge.smk)."""
    return setting_files(config["run"]["methods"], "judge.json", config["judge"]["datasets"])


def base_summaries():
    """The reference row of every table: the starting model, unlearning nothing."""
    return setting_summaries(["base"])


# ---- experiments (issue 6): the inputs and outputs of the tables and figures
from editunlearn import experiments as experiments_grid
from editunlearn.paper import PAPER_FILES


def experiment_summaries(name):
    """The summary.json of every job a table or figure shows (its grid, reference rows, and
    reference lines): its only job inputs, so it reruns when one of them changes."""
    return experiments_grid.summaries(config, name)


def experiment_params(name):
    return experiments_grid.describe(config, name)


def made_by_a_rule(path):
    return any(rule.is_producer(path) for rule in workflow.rules)


def judge_files(name):
    """Input function: the alignment-judge scores (judge.json) of the jobs of Table 6 / Fig. 6
    left, where some rule makes them (the LLM-judge rules); else none, and the table shows '–'.
    Lazy, so that every rule is known when it runs."""

    def files(wildcards):
        parts = experiments_grid.experiment_cells(config, name)
        paths = [c.judge for part in experiments_grid.JUDGED_PARTS.get(name, ())
                 for c in parts[part]["cells"]]
        return [p for p in dict.fromkeys(paths) if made_by_a_rule(p)]

    return files


def case_study_records(name):
    """Fig. 5: the forget-set answers (eval/forget.jsonl) of its jobs and of the starting model."""
    paths = []
    for part in experiments_grid.experiment_cells(config, name).values():
        paths += [c.records("forget") for c in part["references"] + part["cells"]]
    return list(dict.fromkeys(paths))


def case_study_targets(name):
    """Fig. 5: the self-improved targets of its self-improve jobs (it marks the fallbacks)."""
    paths = [c.targets for part in experiments_grid.experiment_cells(config, name).values()
             for c in part["cells"] if c.target == SELF_IMPROVE_TARGET]
    return list(dict.fromkeys(paths))


def comparison_tables():
    """The tables the paper comparison reads that experiments.build builds: {name: csv}."""
    built = experiments_grid.built(config)
    return {t: f"results/tables/{t}.csv" for t in experiments_grid.COMPARISON_TABLES if t in built}


def experiment_outputs(name):
    if name in experiments_grid.TABLES:
        return [f"results/tables/{name}.{ext}" for ext in ("csv", "md", "tex", "html")]
    if name == experiments_grid.COMPARISON:
        return [f"results/paper/{f}" for f in ("values.csv", "kendall.csv", "observations.csv",
                                                "comparison.md")]
    return [f"results/figures/{name}.{ext}" for ext in ("png", "pdf")] + (
        ["results/figures/fig5.md"] if name == "fig5" else [])


def all_experiment_outputs():
    return [path for name in experiments_grid.built(config) for path in experiment_outputs(name)]


def built_experiment_outputs():
    """The files of every table and figure that is complete on disk (for the report)."""
    return [path for name in experiments_grid.EXPERIMENTS
            if all(os.path.exists(p) for p in experiment_outputs(name))
            for path in experiment_outputs(name)]


def library_code(*modules):
    """Library modules a table or figure is drawn by: an input, so editing them redraws it."""
    return code_inputs(os.path.join(workflow.basedir, "editunlearn", m) for m in modules)
# ---- end of experiments
