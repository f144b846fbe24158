import copy

import pytest
import yaml

from editunlearn.config import ConfigError, method_hparams, validate_config


@pytest.fixture
def config(repo):
    with open(repo / "config.yaml") as f:
        return yaml.safe_load(f)


def test_shipped_config_is_valid(config):
    validate_config(config)


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["eval"].update(max_new_tokes=3), "eval.max_new_tokes"),
    (lambda c: c["eval"].update(max_new_tokens="many"), "eval.max_new_tokens"),
    (lambda c: c["run"].update(models=["gpt-5"]), "run.models[0]"),
    (lambda c: c["run"].update(datasets=["tofu"]), "run.datasets[0]"),
    (lambda c: c["run"].update(methods=["rome2"]), "run.methods[0]"),
    (lambda c: c["methods"].update(rome2={}), "methods.rome2"),
    (lambda c: c["methods"]["base"].update(lr=0.1), "methods.base.lr"),
    (lambda c: c["models"]["smollm2-135m"].update(dtype="fp8"), "models.smollm2-135m.dtype"),
    (lambda c: c["models"]["smollm2-135m"].pop("num_layers"), "models.smollm2-135m"),
    (lambda c: c["run"]["forget_sizes"].update(pistol=[30]), "run.forget_sizes.pistol[0]"),
    (lambda c: c.update(device="tpu"), "device"),
    (lambda c: c["llm"].update(backend="anthropic"), "llm.backend"),
    (lambda c: c["llm"].update(model="gpt-5"), "llm.model"),  # local: must be a registry model
    (lambda c: c["llm"].update(base_url="localhost:8000"), "llm.base_url"),
    (lambda c: c["llm"].update(concurency=2), "llm.concurency"),
    (lambda c: c["judge"]["llm"].update(backend="openai", model=None), "judge.llm.model"),
    (lambda c: c["rephrase"]["llm"].update(model=None), "rephrase.llm.model"),
    (lambda c: c["self_improve"].update(methods=["wise"]), "self_improve.methods[0]"),
    (lambda c: c["judge"].update(max_attempts=0), "judge.max_attempts"),
    (lambda c: c["rephrase"].update(datasets=["tofu"]), "rephrase.datasets[0]"),
    (lambda c: c["methods"]["ga"].update(per_model={"smollm2-135m": {"per_dataset": {"pistol": {"lrr": 1e-4}}}}),
     "methods.ga.per_model.smollm2-135m.per_dataset.pistol.lrr"),
    (lambda c: c["methods"]["ga"].update(per_model={"smollm2-135m": {"per_dataset": {"tofu": {"lr": 1e-4}}}}),
     "methods.ga.per_model.smollm2-135m.per_dataset"),
])
def test_bad_config_names_the_key(config, mutate, key):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert f"'{key}" in str(err.value)


def test_method_hparams_layering(config):
    config = copy.deepcopy(config)
    config["methods"]["base"] = {"per_model": {"smollm2-135m": {}}}
    assert method_hparams(config, "base", "smollm2-135m") == {}
    config["methods"]["ga"] = {"epochs": 3, "per_model": {"smollm2-135m": {
        "lr": 1e-4, "per_dataset": {"pistol": {"lr": 3e-4, "batch_size": 2}}}}}
    validate_config(config)
    layered = lambda model, dataset=None: method_hparams(config, "ga", model, dataset)  # noqa: E731
    assert (layered("smollm2-135m", "pistol")["lr"], layered("smollm2-135m", "pistol")["batch_size"]) == (3e-4, 2)
    assert layered("smollm2-135m", "factual")["lr"] == 1e-4 == layered("smollm2-135m")["lr"]
    assert layered("smollm2-135m", "factual")["batch_size"] != 2
    assert layered("llama2-7b-chat", "pistol")["lr"] == 2e-5
    assert {layered(m, d)["epochs"] for m in ("smollm2-135m", "llama2-7b-chat") for d in ("factual", "pistol")} == {3}


def test_snakemake_refuses_a_bad_config_before_any_job(repo, snakemake_exe, tmp_path):
    import subprocess

    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  models: [no-such-model]\n")
    proc = subprocess.run([snakemake_exe, "-n", "--snakefile", str(repo / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(bad), "--cores", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "run.models[0]" in proc.stdout + proc.stderr and "no-such-model" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
