"""The SLURM profile against a real SLURM: tools/local_slurm.sh installs (apt, as root) and starts
a single-node cluster with two fake GPUs; the tiny config runs through
`snakemake --profile profiles/slurm-test`. Checked: every model job (finetune, unlearn,
evaluate_split) is a SLURM job of its own with the resources of config `resources:`, light steps
are not; outputs equal a local run's; a job cancelled mid-run (scancel) is reported, its partial
output is not kept, and the rerun redoes only that job and what depends on it.
Skips, saying why, where SLURM cannot be installed or started (not root, no apt-get)."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from editunlearn.testing import save_tiny_llama
from test_workflow import _config, _copy_repo

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "local_slurm.sh"
MODEL_RULES = {"finetune", "unlearn", "evaluate_split"}
LOCAL_RULES = {"fetch_data", "make_split", "idk_targets", "summarize_setting", "table_base_models",
               "prepare_model", "all"}
# what config `resources:` asks for in these tests (class `tiny`): one GPU, and none for
# evaluations (a per-rule override), so both kinds of sbatch line are exercised
RESOURCES = {"default_class": "tiny", "classes": {"tiny": {
    "gpu": 1, "threads": 1, "mem_mb": 1500, "runtime": 10,
    "per_rule": {"evaluate": {"gpu": 0, "mem_mb": 1000, "runtime": 5}}}}}
EXPECTED = {  # rule -> (GPUs, --mem MB, time limit, CPUs)
    "finetune": (1, 1500, "00:10:00", 1),
    "unlearn": (1, 1500, "00:10:00", 1),
    "evaluate_split": (0, 1000, "00:05:00", 1),
}
SETTING = "results/tiny-a/pistol/{method}/n20_s0"


def _slurm_config(tiny_dirs, mirror, methods):
    config = _config(tiny_dirs, mirror)
    config["run"].update(datasets=["pistol"], methods=methods)
    config["resources"] = RESOURCES
    return config


class Cluster:
    def __init__(self, state_dir):
        self.dir = state_dir
        self.env = {**os.environ, "SLURM_CONF": str(state_dir / "etc" / "slurm.conf")}

    def cmd(self, *args, check=True):
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed: {proc.stderr}")
        return proc.stdout

    def job(self, job_id) -> dict:
        """`scontrol show job` as a dict (kept by the controller for MinJobAge seconds)."""
        out = self.cmd("scontrol", "show", "job", "-o", str(job_id))
        return dict(re.findall(r"(\S+?)=(\S*)", out))

    def pids(self):
        return [int(p.read_text()) for p in (self.dir / "run").glob("*.pid") if p.read_text().strip()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _leave_a_killed_clusters_link(folder):
    """What a test run killed mid-way leaves: /etc/slurm/slurm.conf linking to its cluster's
    config, whose controller is gone. Starting a cluster must replace it, not refuse."""
    system_conf = Path("/etc/slurm/slurm.conf")
    if system_conf.exists() or system_conf.is_symlink():
        return False  # a real SLURM here: `start` refuses it and the module is skipped
    (folder / "etc").mkdir()
    (folder / "run").mkdir()
    (folder / "etc" / "slurm.conf").write_text("# written by tools/local_slurm.sh: killed\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (folder / "run" / "slurmctld.pid").write_text(f"{gone.pid}\n")
    system_conf.parent.mkdir(parents=True, exist_ok=True)
    system_conf.symlink_to(folder / "etc" / "slurm.conf")
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    install = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=900)
    if install.returncode == 3:
        pytest.skip(install.stderr.strip())
    assert install.returncode == 0, install.stderr
    state = tmp_path_factory.mktemp("slurm")
    planted = _leave_a_killed_clusters_link(tmp_path_factory.mktemp("killed"))
    env = {**os.environ, "LOCAL_SLURM_MIN_JOB_AGE": "3600"}  # every job stays visible to scontrol
    cl = Cluster(state)
    pids = []
    theirs = False  # this machine's own SLURM: nothing of ours to stop or check
    try:  # `start` inside: one killed by its timeout must not leave daemons or the system link
        start = subprocess.run([str(SCRIPT), "start", str(state)], capture_output=True, text=True,
                               env=env, timeout=300)
        pids = cl.pids()
        if start.returncode == 3 and not planted:
            theirs = True
            pytest.skip(start.stderr.strip())
        assert start.returncode == 0, start.stderr + "\n" + "".join(
            p.read_text() for p in (state / "log").glob("*.log"))
        assert len(pids) == 3  # munged, slurmctld, slurmd
        yield cl
    finally:
        if not theirs:
            _stop_and_check(state, pids or cl.pids(), planted)


def _stop_and_check(state, pids, planted):
    """Stop the test's cluster: none of its daemons may outlive it, nor the system link to it."""
    stop = subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, text=True,
                          timeout=120)
    left = [pid for pid in pids if _alive(pid)]
    system_conf = Path("/etc/slurm/slurm.conf")
    kept_the_killed_link = planted and "killed" in os.readlink(system_conf) \
        if system_conf.is_symlink() else False
    if kept_the_killed_link:
        system_conf.unlink()  # `start` refused it (the failure reported above)
    assert stop.returncode == 0 and not left, f"daemons still running: {left}; {stop.stderr}"
    assert kept_the_killed_link or not system_conf.is_symlink()


class Run:
    """One snakemake invocation on the SLURM profile (or locally), and what SLURM saw of it."""

    def __init__(self, output, cluster):
        self.output = output
        self.submitted = {int(m) for m in re.findall(r"has been submitted with SLURM jobid (\d+)",
                                                      self.output)}
        self.sbatch = re.findall(r"^sbatch call: (sbatch .*?) --wrap=", self.output, re.M)
        self.jobs = {job_id: cluster.job(job_id) for job_id in sorted(self.submitted)}

    def by_job(self):
        """(rule, wildcards) -> scontrol record, from the job comment the executor sets."""
        out = {}
        for record in self.jobs.values():
            m = re.fullmatch(r"rule_(\w+?)_wildcards_(.*)", record["Comment"])
            out[(m.group(1), m.group(2))] = record
        return out


class SlurmWorkflow:
    def __init__(self, exe, repo, workdir, cluster, on_slurm=True):
        self.exe, self.repo, self.workdir, self.cluster = exe, repo, workdir, cluster
        self.on_slurm = on_slurm
        self.configfile = workdir / "test-config.yaml"

    def write_config(self, config):
        self.configfile.write_text(yaml.safe_dump(config))

    def command(self, *args, profile=None):
        profile = self.on_slurm if profile is None else profile
        mode = (["--profile", str(self.repo / "profiles" / "slurm-test"), "--verbose"] if profile
                else ["--cores", "2"])
        return [self.exe, "--snakefile", str(self.repo / "Snakefile"), "--directory",
                str(self.workdir), "--configfile", str(self.configfile), *mode, *args]

    def start(self, *args):
        self.runs = getattr(self, "runs", 0) + 1
        log = open(self.workdir / f"snakemake-{self.runs}.log", "w+")
        proc = subprocess.Popen(self.command(*args), cwd=self.workdir, env=self.cluster.env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        return proc, log

    def finish(self, proc, log, check=True):
        try:
            proc.wait(timeout=1200)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        log.seek(0)
        output = log.read()
        log.close()
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake failed ({proc.returncode}):\n{output[-8000:]}")
        return proc.returncode, Run(output, self.cluster)

    def run(self, *args, check=True):
        return self.finish(*self.start(*args), check=check)

    def planned_outputs(self):
        proc = subprocess.run(self.command("-n", profile=False), capture_output=True, text=True,
                              env=self.cluster.env, timeout=600)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        files = set()
        for line in proc.stdout.splitlines():
            m = re.match(r"^\s+output: (.+)$", line)
            if m:
                files.update(f.strip() for f in m.group(1).split(","))
        return files


def _outputs(workdir):
    """Every result file and the fine-tuned patch: path -> comparable content."""
    from safetensors.torch import load_file

    out = {}
    for path in sorted((workdir / "results").rglob("*")) + sorted((workdir / "resources" / "finetuned").rglob("*")):
        if not path.is_file() or "benchmarks" in path.parts or "tables" in path.parts:
            continue
        rel = str(path.relative_to(workdir))
        if path.suffix == ".safetensors":
            out[rel] = {k: v.tolist() for k, v in load_file(path).items()}
        elif path.name.endswith("summary.json"):
            out[rel] = _without_seconds(json.loads(path.read_text()))
        else:
            out[rel] = path.read_text()
    return out


def _without_seconds(obj):
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
    return obj


def _executed_rules(output):
    """Rule names of the jobs a snakemake run started (remote and local), in order."""
    return re.findall(r"^(?:local)?rule (\w+):$", output, re.M)


def _heavy_jobs(methods):
    jobs = {("finetune", "tiny-a_pistol")}
    for method in methods:
        jobs.add(("unlearn", f"tiny-a_pistol_{method}_n20_s0"))
        jobs |= {("evaluate_split", f"tiny-a_pistol_{method}_n20_s0_{split}")
                 for split in ("forget", "retain", "locality")}
    return jobs


VICTIM_COMMENT = "rule_evaluate_split_wildcards_tiny-a_pistol_base_n20_s0_retain"


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, snakemake_exe, repo, mirror, cluster):
    """The tiny config on SLURM (PISTOL: fine-tune, unlearn with `base`, three evaluations,
    summary, table). One job, the evaluation on the retain split, is cancelled with scancel while
    it runs, with a partial output of it on disk; then the workflow is run again. Meanwhile the
    same config runs locally (--cores 2), for comparison."""
    root = tmp_path_factory.mktemp("slurmwf")
    tiny_dirs = {"tiny-a": save_tiny_llama(root / "models" / "tiny-a", seed=0)}
    repo_copy = _copy_repo(repo, root / "repo")
    wf = SlurmWorkflow(snakemake_exe, repo_copy, root / "slurm", cluster)
    local = SlurmWorkflow(snakemake_exe, repo_copy, root / "local", cluster, on_slurm=False)
    for w in (wf, local):
        w.workdir.mkdir()
        w.write_config(_slurm_config(tiny_dirs, mirror, ["base"]))
    wf.local = local
    local_run = local.start()  # the reference, while the SLURM run waits on its jobs
    started = time.perf_counter()
    proc, log = wf.start()
    try:
        _cancel_one_job_and_rerun(wf, proc, log, started)
        local.rc, _ = local.finish(*local_run, check=False)
    finally:
        for p in (proc, local_run[0]):  # on failure: no snakemake left behind
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
    return wf


def _cancel_one_job_and_rerun(wf, proc, log, started):
    cluster = wf.cluster
    deadline = time.time() + 900
    job_id = None
    while job_id is None:
        assert proc.poll() is None, "snakemake ended before the job to cancel ran"
        assert time.time() < deadline, "the job to cancel never started"
        for line in cluster.cmd("squeue", "-h", "-o", "%i|%T|%k").splitlines():
            jid, state, comment = line.split("|", 2)
            if comment.strip() == VICTIM_COMMENT and state == "RUNNING":
                job_id = int(jid)
        time.sleep(0.5)
    victim = f"{SETTING.format(method='base')}/eval/retain.jsonl"
    partial = wf.workdir / victim
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text('{"question": "half a rec')  # as if killed while writing its output
    cluster.cmd("scancel", str(job_id))
    wf.rc, wf.first = wf.finish(proc, log, check=False)
    wf.first_seconds = time.perf_counter() - started
    wf.cancelled = job_id
    wf.partial_left = partial.exists() and partial.read_text().startswith('{"question": "half')
    wf.planned = wf.planned_outputs()
    wf.mtimes = {str(p): p.stat().st_mtime_ns for p in (wf.workdir / "results").rglob("*")
                 if p.is_file()}

    started = time.perf_counter()
    _, wf.rerun = wf.run()
    wf.rerun_seconds = time.perf_counter() - started
    (wf.workdir.parent / "sbatch-lines.txt").write_text("\n".join(wf.first.sbatch + wf.rerun.sbatch) + "\n")
    print(f"\nSLURM run: {wf.first_seconds:.0f} s, {len(wf.first.submitted)} SLURM jobs (one "
          f"cancelled); rerun: {wf.rerun_seconds:.0f} s, {len(wf.rerun.submitted)} SLURM job(s); "
          f"sbatch lines in {wf.workdir.parent / 'sbatch-lines.txt'}")


def test_each_model_job_is_a_slurm_job_with_its_configured_resources(slurm_run, cluster):
    run = slurm_run.first
    jobs = run.by_job()
    # one SLURM job per model job, none for the light steps (local rules)
    assert set(jobs) == _heavy_jobs(["base"])
    assert len(run.submitted) == len(jobs) == 5
    assert not {rule for rule, _ in jobs} & LOCAL_RULES
    assert {rule for rule in _executed_rules(run.output)} - MODEL_RULES <= LOCAL_RULES
    for (rule, wildcards), record in {**jobs, **slurm_run.rerun.by_job()}.items():
        gpus, mem, limit, cpus = EXPECTED[rule]
        cancelled = record["JobId"] == str(slurm_run.cancelled)
        assert record["JobState"] == ("CANCELLED" if cancelled else "COMPLETED"), (rule, wildcards)
        assert record["MinMemoryNode"] == f"{mem}M", (rule, record["MinMemoryNode"])
        assert record["TimeLimit"] == limit, (rule, record["TimeLimit"])
        assert int(record["NumCPUs"]) == cpus
        assert record.get("TresPerJob", "") == (f"gres:gpu:{gpus}" if gpus else ""), rule
    # the sbatch lines the executor used
    assert len(run.sbatch) == 5
    for line in run.sbatch + slurm_run.rerun.sbatch:
        rule = re.search(r"--comment rule_(\w+?)_wildcards_", line).group(1)
        gpus, mem, limit, cpus = EXPECTED[rule]
        assert f"--mem {mem}" in line and f"-t {int(limit[3:5])}" in line
        assert f"--cpus-per-task={cpus}" in line
        assert ("--gpus=1" in line) == bool(gpus), line
    # the job completion log (there is no slurmdbd) has every job
    jobcomp = (cluster.dir / "log" / "jobcomp.log").read_text()
    for job_id in run.submitted | slurm_run.rerun.submitted:
        assert re.search(rf"^JobId={job_id} ", jobcomp, re.M), job_id


def test_cancelled_job_is_reported_and_only_it_and_its_dependents_rerun(slurm_run, cluster):
    base = SETTING.format(method="base")
    wf = slurm_run
    assert wf.rc != 0
    assert cluster.job(wf.cancelled)["JobState"] == "CANCELLED"
    assert f"SLURM-job '{wf.cancelled}' failed, SLURM status is: 'CANCELLED'" in wf.first.output
    # keep-going: the jobs that do not need the cancelled one ran in that same run
    for split in ("forget", "locality"):
        assert (wf.workdir / base / "eval" / f"{split}.summary.json").is_file()
    # its partial output does not count as done: removed, and planned again, with its dependents
    assert not wf.partial_left
    assert wf.planned == {f"{base}/eval/retain.jsonl", f"{base}/eval/retain.summary.json",
                          f"{base}/summary.json", "results/tables/base_models.csv",
                          "results/tables/base_models.md"}
    # the rerun: one SLURM job (the cancelled evaluation) and the local steps that need it
    assert set(wf.rerun.by_job()) == {("evaluate_split", "tiny-a_pistol_base_n20_s0_retain")}
    assert sorted(_executed_rules(wf.rerun.output)) == [
        "all", "evaluate_split", "summarize_setting", "table_base_models"]
    changed = {p for p, m in wf.mtimes.items() if Path(p).stat().st_mtime_ns != m}
    assert not changed, f"the rerun rewrote finished outputs: {changed}"
    assert (wf.workdir / "results" / "tables" / "base_models.md").is_file()


def test_third_slurm_run_submits_nothing(slurm_run):
    _, again = slurm_run.run()
    assert not again.submitted and "Nothing to be done" in again.output


def test_slurm_outputs_equal_a_local_run(slurm_run):
    assert slurm_run.local.rc == 0
    on_slurm, here = _outputs(slurm_run.workdir), _outputs(slurm_run.local.workdir)
    # patch, 3 splits x 2 files, summary, and the fine-tuned starting model
    assert set(on_slurm) == set(here) and len(here) == 9
    for path in here:
        assert on_slurm[path] == here[path], path
