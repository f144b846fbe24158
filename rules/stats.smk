# Key statistics of the locate-and-edit editors (ROME with mom2_adjustment, MEMIT, AlphaEdit):
# E[k k^T] of MLP down-projection inputs over a text corpus. Two cached artifacts, shared by every
# editing job that reads them (and an input of those jobs only): a corpus of token chunks per
# (model, corpus, n_samples), and the statistics per (model, start model, corpus, n_samples) for
# the union of the layers of every editor configured under methods: -- one corpus pass for all.

import itertools

from editunlearn.editing import stats as key_stats_module
from editunlearn.methods import get_method_class


wildcard_constraints:
    corpus="|".join(key_stats_module.CORPORA),
    start=r"base|finetuned-[a-z]+",


def key_stats_settings():
    """Corpus sampling and statistics settings (config `key_stats:`, defaults in editing/stats.py)."""
    return {**key_stats_module.CORPUS_DEFAULTS, **config.get("key_stats", {})}


def key_stats_code_files():
    return code_inputs(method_code_files("key_stats", module_path=key_stats_module.__file__))


def start_name(dataset):
    """The model a dataset's jobs start from: the base model, or its fine-tuned version."""
    return f"finetuned-{dataset}" if dataset in config["finetune"]["datasets"] else "base"


def _editor_hparams(method, model, dataset):
    """The method's hyper-parameters if it is an editor that reads key statistics, else None."""
    cls = get_method_class(method)
    if not hasattr(cls, "needs_key_stats"):
        return None
    hparams = method_hparams(config, method, model, dataset)
    return hparams if cls.needs_key_stats(hparams) else None


def key_stats_file(w):
    """The key statistics an unlearning job reads; none ([]) for methods that read none."""
    hparams = _editor_hparams(w.method, w.model, w.dataset)
    if hparams is None:
        return []
    name = f"{hparams['mom2_dataset']}_n{hparams['mom2_n_samples']}"
    return f"resources/stats/{w.model}/{start_name(w.dataset)}/{name}.safetensors"


def key_stats_layers(model, corpus, n):
    """Every layer any configured editor reads from these statistics: computed in one pass, so
    adding a method that shares the corpus costs nothing more."""
    layers = set()
    for method, dataset in itertools.product(config["methods"], DATASETS):
        hparams = _editor_hparams(method, model, dataset)
        if hparams and hparams["mom2_dataset"] == corpus and hparams["mom2_n_samples"] == n:
            layers.update(get_method_class(method).key_stats_layers(hparams))
    # an editor configured with layers this model lacks fails in its own job, not here
    return sorted(l for l in layers if l < model_spec(model).num_layers)


def key_stats_start_inputs(w):
    inputs = {"model": model_dir(w.model)}
    if w.start != "base":
        inputs["start_patch"] = f"resources/finetuned/{w.model}/{w.start[len('finetuned-'):]}.patch.safetensors"
    return inputs


rule key_corpus:
    input:
        model=lambda w: model_dir(w.model),
        code=key_stats_code_files(),
    output:
        "resources/corpora/{model}/{corpus}_n{n}.safetensors",
    params:
        spec=lambda w: spec_params(w.model),
        settings={k: v for k, v in key_stats_settings().items() if k != "stats_batch_size"},
        device=config["device"],
    threads: model_job_threads("unlearn")
    priority: CRITICAL_PATH_PRIORITY
    resources:
        **model_job_resources("unlearn"),
    log:
        "logs/key_stats/{model}/corpus_{corpus}_n{n}.log",
    benchmark:
        "results/benchmarks/key_corpus/{model}/{corpus}_n{n}.tsv"
    script:
        "../scripts/key_corpus.py"


rule key_stats:
    input:
        unpack(key_stats_start_inputs),
        corpus="resources/corpora/{model}/{corpus}_n{n}.safetensors",
        code=key_stats_code_files(),
    output:
        "resources/stats/{model}/{start}/{corpus}_n{n}.safetensors",
    params:
        spec=lambda w: spec_params(w.model),
        layers=lambda w: key_stats_layers(w.model, w.corpus, int(w.n)),
        settings={"stats_batch_size": key_stats_settings()["stats_batch_size"]},
        device=config["device"],
    threads: model_job_threads("unlearn")
    resources:
        **model_job_resources("unlearn"),
    log:
        "logs/key_stats/{model}/{start}/{corpus}_n{n}.log",
    benchmark:
        "results/benchmarks/key_stats/{model}/{start}/{corpus}_n{n}.tsv"
    script:
        "../scripts/key_stats.py"
