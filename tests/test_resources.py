"""Per-model job resources from config `resources:`, and one GPU per job on a workstation."""

import copy
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from editunlearn.config import ConfigError, validate_config
from editunlearn.resources import claim_gpus, job_resources


@pytest.fixture
def config(repo):
    with open(repo / "config.yaml") as f:
        return yaml.safe_load(f)


def test_size_classes_and_per_rule_overrides(config):
    assert job_resources(config, "smollm2-135m", "unlearn")["gpu"] == 0
    big = job_resources(config, "llama2-7b-chat", "unlearn")
    assert big["gpu"] == 1 and big["mem_mb"] >= 32000
    assert job_resources(config, "llama3.1-8b-instruct", "evaluate")["gpu"] == 1
    # a model missing from resources.models gets the default class
    assert job_resources(config, "my-local-model", "evaluate") == \
        job_resources(config, "smollm2-135m", "evaluate")
    cls = config["resources"]["classes"]["cpu-small"]
    cls["per_rule"] = {"evaluate": {"runtime": 7}}
    assert job_resources(config, "smollm2-135m", "evaluate")["runtime"] == 7
    assert job_resources(config, "smollm2-135m", "unlearn")["runtime"] == cls["runtime"]


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["resources"].update(default_class="huge"), "resources.default_class"),
    (lambda c: c["resources"]["models"].update({"gpt-5": "gpu-7b"}), "resources.models.gpt-5"),
    (lambda c: c["resources"]["models"].update({"smollm2-135m": "tiny"}), "resources.models.smollm2-135m"),
    (lambda c: c["resources"]["classes"]["gpu-7b"].update(gpus=2), "resources.classes.gpu-7b.gpus"),
    (lambda c: c["resources"]["classes"]["gpu-7b"].update(mem_mb="40G"), "resources.classes.gpu-7b.mem_mb"),
    (lambda c: c["resources"]["classes"]["gpu-7b"]["per_rule"].update(table={}),
     "resources.classes.gpu-7b.per_rule.table"),
    # SLURM would be asked for `--gpus=a100:0`
    (lambda c: c["resources"]["classes"]["cpu-small"].update(gpu_model="a100"),
     "resources.classes.cpu-small.gpu_model"),
    (lambda c: c["resources"]["classes"]["gpu-7b"].update(gpu_model="a100", per_rule={"evaluate": {"gpu": 0}}),
     "resources.classes.gpu-7b.per_rule.evaluate.gpu_model"),
])
def test_bad_resources_name_the_key(config, mutate, key):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert f"'{key}" in str(err.value)


def planned_jobs(snakemake_exe, repo, tmp_path, run, more_config="", options=()):
    """Dry run of the workflow with config `run: <run>` (and `more_config`, YAML; more Snakemake
    `options`): rule name -> the printed block of each of its planned jobs."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run: {run}\n{more_config}")
    proc = subprocess.run([snakemake_exe, "-n", "--snakefile", str(repo / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(cfg), "--cores", "16",
                           *options],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    jobs = {}
    for block in proc.stdout.split("\n\n"):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if m:
            jobs.setdefault(m.group(1), []).append(block)
    return jobs


def test_rules_ask_for_the_configured_resources(snakemake_exe, repo, tmp_path):
    """Dry run of a 7B model: its model jobs ask for a GPU and the class's memory and time;
    light steps ask for nothing (they are local rules)."""
    blocks = {rule: found[0] for rule, found in planned_jobs(
        snakemake_exe, repo, tmp_path, "{models: [llama2-7b-chat], datasets: [factual], methods: [base]}").items()}
    def asked(rule):
        """threads and resources of a rule's planned job, whatever order Snakemake prints them in"""
        resources = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"resources: (.*)", blocks[rule]).group(1)))
        return int(re.search(r"threads: (\d+)", blocks[rule]).group(1)), resources

    for rule, runtime, mem_mb in (("unlearn", "240", "40000"), ("evaluate_split", "120", "32000")):
        threads, resources = asked(rule)
        assert threads == 8 and {"gpu": "1", "runtime": runtime, "mem_mb": mem_mb}.items() <= resources.items()
    for rule in ("fetch_data", "make_split", "idk_targets", "prepare_model", "summarize_setting"):
        assert "gpu=" not in blocks[rule], rule


def test_a_gpu_type_reaches_only_the_jobs_of_its_class(snakemake_exe, repo, tmp_path):
    """`gpu_model` on the 7B class: its jobs ask SLURM for that GPU type, the embedded model's jobs
    and the rephrases it writes (CPU) do not (they would ask for `--gpus=a100:0`)."""
    more = "resources: {classes: {gpu-7b: {gpu_model: a100}}}\n"
    jobs = planned_jobs(snakemake_exe, repo, tmp_path,
                        "{models: [llama2-7b-chat, smollm2-135m], datasets: [factual], methods: [base]}", more)
    by_model = {}
    for rule in ("unlearn", "evaluate_split", "evaluate_rephrase", "rephrase"):
        for block in jobs[rule]:
            model = re.search(r"model=([\w.\-]+)", block)
            by_model.setdefault(model.group(1) if model else "llm", set()).add("gpu_model=a100" in block)
    assert by_model == {"llama2-7b-chat": {True}, "smollm2-135m": {False}, "llm": {False}}, by_model


@pytest.mark.parametrize("examples", ["as shipped", "EDIT examples uncommented"])
def test_the_slurm_profile_is_accepted(snakemake_exe, repo, tmp_path, examples):
    """`--workflow-profile profiles/slurm` (what the README tells cluster users to run; the SLURM
    test runs profiles/slurm-test) plans the workflow: Snakemake and the pinned SLURM plugin know
    every option in it, also the commented examples a user switches on."""
    text = (repo / "profiles" / "slurm" / "config.yaml").read_text()
    if examples != "as shipped":
        text, uncommented = re.subn(r"^(\s*)# (\s*)([a-z][a-z_-]*:(?: |$))", r"\1\2\3", text, flags=re.M)
        assert uncommented >= 8, uncommented
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(text)
    jobs = planned_jobs(snakemake_exe, repo, tmp_path,
                        "{models: [smollm2-135m], datasets: [factual], methods: [base]}",
                        options=["--workflow-profile", str(profile)])
    assert {"unlearn", "evaluate_split", "table1"} <= set(jobs)
    if examples != "as shipped":
        assert all("slurm_partition=gpu-short" in block for block in jobs["evaluate_split"])


def test_long_shared_jobs_start_on_the_first_free_core(snakemake_exe, repo, tmp_path):
    """The fine-tune, key corpus and rephrases, which many jobs wait for, outrank those jobs and
    ask for one thread: Snakemake reserves no cores, so a multi-thread job would wait behind every
    ready 1-thread job (README, "Compute resources per job")."""
    def priority_and_threads(block):
        """Snakemake prints a job's priority and threads only where they are not 0 and 1"""
        priority, threads = (re.search(rf"{key}: (\d+)", block) for key in ("priority", "threads"))
        return int(priority.group(1)) if priority else 0, int(threads.group(1)) if threads else 1

    run = "{models: [smollm2-135m], datasets: [pistol], methods: [rome]}"
    jobs = {rule: {priority_and_threads(block) for block in found}
            for rule, found in planned_jobs(snakemake_exe, repo, tmp_path, run).items()}
    for rule in ("finetune", "key_corpus", "rephrase"):
        assert len(jobs[rule]) == 1, (rule, jobs[rule])
        (priority, threads), = jobs[rule]
        assert priority > 0 and threads == 1, (rule, priority, threads)
    for rule in ("unlearn", "evaluate_split", "evaluate_rephrase", "key_stats"):
        assert jobs[rule] == {(0, 1)}, (rule, jobs[rule])


def test_a_job_asking_for_more_memory_than_the_budget_runs_alone(snakemake_exe, repo, tmp_path):
    """On a small machine `make reproduce`'s budget (`--resources mem_mb=N`) can be below the
    fine-tune's 4 GB ask. Snakemake cuts a job's ask to the budget, so the fine-tune runs alone
    instead of the run stopping ("Job needs mem_mb=4000 but only ... are available"); the README
    relies on this."""
    jobs = planned_jobs(snakemake_exe, repo, tmp_path,
                        "{models: [smollm2-135m], datasets: [pistol], methods: [base]}",
                        options=["--resources=mem_mb=3500"])
    for rule, expected in (("finetune", "3500"), ("unlearn", "3000")):
        assert {re.search(r"mem_mb=(\d+)", block).group(1) for block in jobs[rule]} == {expected}


@pytest.fixture
def release_gpus():
    from editunlearn import resources

    yield
    while resources._held_locks:
        resources._held_locks.pop().close()


def test_claim_gpus_gives_each_job_its_own_gpu(tmp_path, monkeypatch, release_gpus):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert claim_gpus(1, "auto", lock_dir=tmp_path, count=3) == [0]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    # a second job on the same machine (another process) gets another GPU
    child = (
        "import os, sys; from editunlearn.resources import claim_gpus; "
        f"print(claim_gpus(2, 'cuda', lock_dir={str(tmp_path)!r}, count=3), "
        "os.environ['CUDA_VISIBLE_DEVICES'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout
    assert out.strip() == "[1, 2] 1,2"  # the child ended: its locks are free again
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout
    assert out.strip() == "[1, 2] 1,2"


def test_jobs_on_a_one_gpu_machine_take_turns(tmp_path, monkeypatch, release_gpus):
    from editunlearn import resources

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert claim_gpus(1, "auto", lock_dir=tmp_path, count=1) == [0]
    child = (
        "import logging, os; logging.basicConfig(level=logging.INFO); "
        "from editunlearn.resources import claim_gpus; "
        f"print(claim_gpus(1, 'auto', lock_dir={str(tmp_path)!r}, count=1, poll_seconds=0.05), "
        "os.environ['CUDA_VISIBLE_DEVICES'], flush=True)"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        waiting = proc.stderr.readline()  # the second job waits while the first holds the GPU
        assert "held by other jobs" in waiting, waiting
        resources._held_locks.pop().close()  # the first job ends
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert out.strip() == "[0] 0"


@pytest.mark.parametrize("gpu, device, env, count", [
    (0, "auto", {}, 4),                               # the job asks for no GPU
    (1, "cpu", {}, 4),                                # the config says CPU
    (1, "cuda:1", {}, 4),                             # the config names the GPU
    (1, "auto", {"CUDA_VISIBLE_DEVICES": "3"}, 4),    # the user or a scheduler chose
    (1, "auto", {"SLURM_JOB_ID": "7"}, 4),            # SLURM allocated it
    (1, "auto", {}, 0),                               # no GPU at all
])
def test_claim_gpus_leaves_made_choices_alone(tmp_path, monkeypatch, gpu, device, env, count):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert claim_gpus(gpu, device, lock_dir=tmp_path, count=count) is None
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == env.get("CUDA_VISIBLE_DEVICES")


def _make_reproduce_lines(repo, *assignments):
    out = subprocess.run(["make", "-n", "-C", str(repo), "reproduce", *assignments],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line for line in out.splitlines() if "bin/snakemake" in line]


def _make_reproduce_line(repo, *assignments):
    return _make_reproduce_lines(repo, *assignments)[0]


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="the default budget reads /proc/meminfo")
def test_make_reproduce_budgets_memory(repo):
    """One-thread jobs on many cores would run more jobs than RAM holds: `make reproduce` caps the
    jobs' summed mem_mb at 80% of the memory free now, unless MEM_MB says otherwise."""
    with open("/proc/meminfo") as f:
        available_mb = int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M).group(1)) // 1024
    budget = int(re.search(r"--resources=mem_mb=(\d+)", _make_reproduce_line(repo)).group(1))
    assert 0.6 * available_mb < budget < available_mb
    assert "--resources=mem_mb=1234 " in _make_reproduce_line(repo, "MEM_MB=1234") + " "
    assert "--resources" not in _make_reproduce_line(repo, "MEM_MB=")


def test_make_reproduce_passes_a_target_in_args(repo):
    """`make reproduce ARGS=table3` builds Table 3 (the memory budget before it must not swallow
    the target as one more resource: Snakemake's --resources takes a list), then the report of
    every table and figure built so far (`built`), this run's targets among them."""
    from snakemake.cli import parse_args
    run, report = (parse_args(shlex.split(line.split("bin/snakemake", 1)[1]))[1]
                   for line in _make_reproduce_lines(repo, "MEM_MB=1234", "ARGS=table3 fig4"))
    assert run.targets == ["table3", "fig4"] and run.report is None
    assert run.resources["mem_mb"].value == 1234
    assert report.targets == ["built", "table3", "fig4"] and str(report.report) == "report.html"
