"""End to end through snakemake on a tiny random Llama: outputs, caching, reruns, bad input."""

import csv
import json
import re
import shutil
import subprocess

import pytest
import yaml

from editunlearn.metrics import rouge1_recall
from editunlearn.testing import save_tiny_llama, tiny_model_entry

pytestmark = pytest.mark.slow


def _config(tiny_dirs, mirror, ga_lr=1e-3, min_rouge1=0.0, **eval_overrides):
    return {
        "device": "cpu",
        "data": {"mirror": str(mirror), "download": False},
        "run": {"models": list(tiny_dirs), "datasets": ["factual", "pistol"], "methods": ["base", "ga"],
                "seeds": [0], "forget_sizes": {"factual": [4], "pistol": [20]}},
        "eval": {"max_new_tokens": 6, "top_k": 100, "max_items": 3, **eval_overrides},
        "models": {name: tiny_model_entry(path) for name, path in tiny_dirs.items()},
        "methods": {"base": {}, "ga": {"epochs": 1, "batch_size": 2, "lr": ga_lr,
                                       "lora": {"r": 2, "alpha": 4}}},
        # generated data and judging have their own workflow test (test_generate.py)
        "rephrase": {"datasets": []},
        "judge": {"datasets": []},
        "finetune": {"datasets": ["pistol"], "per_model": {},
                     "hparams": {"epochs": 1, "batch_size": 32, "lr": 1e-3, "lora": {"r": 2, "alpha": 4},
                                 "min_rouge1": min_rouge1, "monitor_items": 2, "max_new_tokens": 4}},
        "experiments": {"build": []},  # the `run:` grid only; the paper's tables: test_tables.py
    }


REPO_PARTS = ["Snakefile", "rules", "scripts", "schemas", "config.yaml", "profiles", "envs", "editunlearn"]


def _copy_repo(repo, dest):
    """A private copy of the workflow, so tests may edit its code without touching the checkout."""
    dest.mkdir()
    for part in REPO_PARTS:
        src = repo / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


class Workflow:
    def __init__(self, exe, repo, workdir):
        self.exe, self.repo, self.workdir = exe, repo, workdir
        self.configfile = workdir / "test-config.yaml"

    def write_config(self, config):
        self.configfile.write_text(yaml.safe_dump(config))

    def run(self, *args, check=True, timeout=1200):
        cmd = [self.exe, "--snakefile", str(self.repo / "Snakefile"), "--directory", str(self.workdir),
               "--configfile", str(self.configfile), "--cores", "2", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
        return proc

    def planned_outputs(self, *targets):
        """Output files of the jobs a dry run would execute."""
        out = self.run("-n", *targets).stdout
        files = set()
        for line in out.splitlines():
            m = re.match(r"^\s+output: (.+)$", line)
            if m:
                files.update(f.strip() for f in m.group(1).split(","))
        if not files:  # an empty plan must be Snakemake's, not a line format this parser misses
            assert "Nothing to be done" in out, out[-3000:]
        return files


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, snakemake_exe, repo, mirror):
    root = tmp_path_factory.mktemp("wf")
    tiny_dirs = {"tiny-a": save_tiny_llama(root / "models" / "tiny-a", seed=0),
                 "tiny-b": save_tiny_llama(root / "models" / "tiny-b", seed=1)}
    wf = Workflow(snakemake_exe, _copy_repo(repo, root / "repo"), root / "work")
    wf.workdir.mkdir()
    wf.tiny_dirs, wf.mirror = tiny_dirs, mirror
    wf.write_config(_config(tiny_dirs, mirror))
    wf.run()
    return wf


def test_default_dag_resolves(snakemake_exe, repo, tmp_path):
    proc = subprocess.run([snakemake_exe, "-n", "--snakefile", str(repo / "Snakefile"),
                           "--directory", str(tmp_path), "--cores", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for rule in ("fetch_data", "prepare_model", "make_split", "unlearn", "evaluate_split",
                 "table_base_models"):
        assert re.search(rf"^{rule}\s+\d+", proc.stdout, re.M), rule


def test_run_produces_table_and_per_item_records(workflow):
    with open(workflow.workdir / "results/tables/base_models.csv") as f:
        rows = list(csv.DictReader(f))
    keys = {(r["model"], r["dataset"], r["split"]) for r in rows}
    assert keys == {(m, "factual", s) for m in ("tiny-a", "tiny-b") for s in ("forget", "retain")} | \
        {(m, "pistol", s) for m in ("tiny-a", "tiny-b") for s in ("forget", "retain", "locality")}
    assert all(r["n"] == "3" for r in rows)
    md = (workflow.workdir / "results/tables/base_models.md").read_text()
    assert "| tiny-a | pistol | fine-tuned | n20_s0 | locality | 3 |" in md
    assert "| tiny-a | factual | base | n4_s0 | forget | 3 |" in md
    assert (workflow.workdir / "resources/finetuned/tiny-a/pistol.patch.safetensors").exists()
    job = workflow.workdir / "results/tiny-a/pistol/base/n20_s0"
    summary = json.loads((job / "summary.json").read_text())
    assert set(summary["splits"]) == {"forget", "retain", "locality"}
    means = {}
    for split in summary["splits"]:
        records = [json.loads(line) for line in (job / f"eval/{split}.jsonl").read_text().splitlines()]
        for r in records:  # every record scored from its own generation
            assert r["rouge1_recall"] == pytest.approx(rouge1_recall(r["answer"], r["generation"]))
            assert 0 < r["prob"] <= 1 and 0 <= r["hit_rate"] <= 1
            assert (split == "locality") != ("edge" in r)  # PISTOL's items carry their contract edge
        means[split] = {k: sum(r[k] for r in records) / len(records) for k in ("rouge1_recall", "prob", "mrr")}
        for key, mean in means[split].items():
            assert summary["splits"][split][key] == pytest.approx(mean), (split, key)
    assert summary["combined_score"] == pytest.approx(
        1 - means["forget"]["rouge1_recall"] + means["retain"]["rouge1_recall"])
    assert summary["non_functional"] == (means["forget"]["rouge1_recall"] < 0.05
                                         and means["retain"]["rouge1_recall"] < 0.05)


def test_second_run_does_nothing(workflow):
    assert workflow.planned_outputs() == set()


def test_changing_resources_reruns_nothing(workflow):
    """Resources (config `resources:`) say where a job runs, not what it computes."""
    config = _config(workflow.tiny_dirs, workflow.mirror)
    config["resources"] = {"default_class": "big", "classes": {"big": {
        "gpu": 2, "threads": 1, "mem_mb": 123456, "runtime": 999,
        "per_rule": {"evaluate": {"gpu": 0}}}}}
    workflow.write_config(config)
    try:
        assert workflow.planned_outputs() == set()
    finally:
        workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror))


def test_changing_one_models_setting_reruns_only_its_jobs(workflow):
    config = yaml.safe_load(workflow.configfile.read_text())
    config["models"]["tiny-b"]["system_prompt"] = "Answer briefly."
    workflow.write_config(config)
    try:
        planned = workflow.planned_outputs()
        job_outputs = {p for p in planned if p.startswith("results/tiny-")}
        assert job_outputs and all(p.startswith("results/tiny-b/") for p in job_outputs)
        # its fine-tune, and on both datasets for base and ga: 4 patches, 10 split evaluations
        assert "resources/finetuned/tiny-b/pistol.patch.safetensors" in planned
        assert len([p for p in job_outputs if p.endswith("patch.safetensors")]) == 4
        assert len([p for p in job_outputs if p.endswith(".jsonl")]) == 10
        assert planned - job_outputs == {"results/tables/base_models.csv", "results/tables/base_models.md",
                                         "resources/finetuned/tiny-b/pistol.patch.safetensors"}
    finally:
        workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror))
    assert workflow.planned_outputs() == set()


def test_changing_an_eval_setting_reruns_evaluations_not_unlearning(workflow):
    workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror, max_new_tokens=7))
    try:
        planned = workflow.planned_outputs()
        assert len([p for p in planned if p.endswith(".jsonl")]) == 20
        assert not [p for p in planned if p.endswith("patch.safetensors")]
    finally:
        workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror))


def test_retuning_the_eval_batch_size_redoes_evaluations_not_unlearning(workflow):
    config = _config(workflow.tiny_dirs, workflow.mirror)
    config["models"]["tiny-a"]["eval_batch_size"] = 3
    workflow.write_config(config)
    try:
        planned = workflow.planned_outputs()
        assert "results/tiny-a/factual/ga/n4_s0/eval/forget.jsonl" in planned
        assert not [p for p in planned if "/factual/" in p and p.endswith("patch.safetensors")]
        assert not [p for p in planned if p.startswith("results/tiny-b/")]
    finally:
        workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror))


def _only_method_jobs(planned, method):
    job_outputs = {p for p in planned if p.startswith("results/tiny-")}
    assert job_outputs, "nothing would rerun"
    assert all(f"/{method}/" in p for p in job_outputs), sorted(job_outputs)
    assert len([p for p in job_outputs if p.endswith("patch.safetensors")]) == 4
    assert not planned - job_outputs  # the base table does not depend on other methods


def test_changing_a_method_hyperparameter_reruns_only_that_methods_jobs(workflow):
    workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror, ga_lr=2e-3))
    try:
        _only_method_jobs(workflow.planned_outputs(), "ga")
    finally:
        workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror))


def test_a_per_dataset_override_reruns_only_that_datasets_jobs_of_that_model(workflow):
    config = _config(workflow.tiny_dirs, workflow.mirror)
    model = sorted(workflow.tiny_dirs)[0]
    config["methods"]["ga"]["per_model"] = {model: {"per_dataset": {"pistol": {"lr": 2e-3}}}}
    workflow.write_config(config)
    try:
        planned = workflow.planned_outputs()
        assert {p for p in planned if p.endswith("patch.safetensors")} == {
            f"results/{model}/pistol/ga/n20_s0/patch.safetensors"}
        assert all(p.startswith(f"results/{model}/pistol/ga/") for p in planned), sorted(planned)
    finally:
        workflow.write_config(_config(workflow.tiny_dirs, workflow.mirror))


def _edit_and_plan(workflow, module):
    path = workflow.repo / "editunlearn" / module
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    try:
        return workflow.planned_outputs()
    finally:
        path.write_text(original)
        # content back, mtime newer: mark the outputs current again for the next tests
        workflow.run("--touch")
        assert workflow.planned_outputs() == set()


def test_editing_a_methods_module_reruns_only_that_methods_jobs(workflow):
    _only_method_jobs(_edit_and_plan(workflow, "methods/ga.py"), "ga")


def test_editing_shared_training_code_reruns_what_trains_with_it(workflow):
    planned = _edit_and_plan(workflow, "training.py")
    # ga and the fine-tuning stage train with it; base on the factual dataset does not
    assert "results/tiny-a/factual/ga/n4_s0/patch.safetensors" in planned
    assert "resources/finetuned/tiny-a/pistol.patch.safetensors" in planned
    assert not [p for p in planned if p.startswith("results/tiny-a/factual/base/")]


def test_editing_the_metrics_reevaluates_every_job(workflow):
    planned = _edit_and_plan(workflow, "metrics.py")
    assert len([p for p in planned if p.endswith(".jsonl")]) == 20  # every split of every job
    # factual unlearning does not use the metrics (the PISTOL fine-tune's gate does)
    assert not [p for p in planned if "/factual/" in p and p.endswith("patch.safetensors")]


def test_moving_the_checkout_reruns_nothing(workflow, tmp_path):
    # Snakemake records each job's input paths: code inputs must not be absolute paths
    moved = Workflow(workflow.exe, shutil.copytree(workflow.repo, tmp_path / "repo", symlinks=True),
                     shutil.copytree(workflow.workdir, tmp_path / "work", symlinks=True))
    assert moved.planned_outputs() == set()


def test_ga_job_lowers_forget_likelihood(workflow):
    def prob(method, split):
        path = workflow.workdir / f"results/tiny-a/factual/{method}/n4_s0/eval/{split}.summary.json"
        return json.loads(path.read_text())["prob"]

    assert prob("ga", "forget") < prob("base", "forget")


def test_rerun_gives_identical_metrics(workflow):
    target = "results/tiny-a/factual/base/n4_s0/eval/retain.jsonl"
    before, written = (workflow.workdir / target).read_text(), (workflow.workdir / target).stat().st_mtime_ns
    workflow.run("--forcerun", "evaluate_split", "--until", "evaluate_split", target)
    assert (workflow.workdir / target).stat().st_mtime_ns != written  # really evaluated again
    assert (workflow.workdir / target).read_text() == before


def test_corrupted_dataset_fails_clearly_and_keeps_results(workflow):
    data_file = workflow.workdir / "resources/data/factual_data.json"
    table = workflow.workdir / "results/tables/base_models.csv"
    original, table_before = data_file.read_bytes(), table.read_text()
    data_file.write_bytes(original.replace(b"Shakespeare", b"Marlowe"))
    try:
        proc = workflow.run(check=False)
        assert proc.returncode != 0
        output = proc.stdout + proc.stderr
        assert "checksum mismatch" in output and "factual_data.json" in output
        assert table.read_text() == table_before
        assert (workflow.workdir / "results/tiny-a/factual/base/n4_s0/eval/forget.jsonl").exists()
    finally:
        data_file.write_bytes(original)


def test_finetune_below_the_gate_fails_and_builds_nothing_on_it(snakemake_exe, repo, tmp_path, tiny_dir, mirror):
    wf = Workflow(snakemake_exe, repo, tmp_path)
    wf.write_config(_config({"tiny": tiny_dir}, mirror, min_rouge1=0.99))
    proc = wf.run(check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "below the gate 0.99" in output and "finetune.per_model.tiny.min_rouge1" in output
    assert not (tmp_path / "resources/finetuned/tiny/pistol.patch.safetensors").exists()
    assert not list((tmp_path / "results").glob("tiny/pistol/*/*/patch.safetensors"))
    report = json.loads((tmp_path / "logs/finetune/tiny/pistol.report.json").read_text())
    assert report["passed"] is False and len(report["curve"]) == 1


def test_missing_data_without_mirror_or_download_fails_clearly(snakemake_exe, repo, tmp_path, tiny_dir):
    wf = Workflow(snakemake_exe, repo, tmp_path)
    wf.write_config({**_config({"tiny": tiny_dir}, tmp_path / "no-mirror")})
    proc = wf.run("resources/data/sample_data_1.json", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "sample_data_1.json" in output and "no-mirror" in output and "data.download" in output
