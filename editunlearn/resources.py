"""Compute resources of the model jobs (fine-tune, unlearn, evaluate), from the config's
``resources:`` block, and the choice of a free GPU on a multi-GPU machine without a scheduler.

Resources say where and how a job runs (a SLURM request, how many jobs share a machine), never
what it computes: they are not ``params``, so changing them reruns nothing."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

KEYS = ("gpu", "threads", "mem_mb", "runtime")
OPTIONAL_KEYS = ("gpu_model",)  # None where unset: Snakemake then leaves the resource out
RULE_GROUPS = ("finetune", "unlearn", "evaluate")


def model_class(config: dict, model: str) -> str:
    block = config["resources"]
    return block.get("models", {}).get(model, block["default_class"])


def job_resources(config: dict, model: str, group: str) -> dict:
    """``gpu``, ``threads``, ``mem_mb``, ``runtime`` (minutes) and ``gpu_model`` (SLURM's GPU
    type, or None) of one model job: its model's size class, with the class's
    ``per_rule.<group>`` overrides on top."""
    if group not in RULE_GROUPS:
        raise ValueError(f"unknown rule group {group!r} (known: {', '.join(RULE_GROUPS)})")
    cls = config["resources"]["classes"][model_class(config, model)]
    out = {k: cls.get(k) for k in KEYS + OPTIONAL_KEYS}
    out.update((cls.get("per_rule") or {}).get(group, {}))
    return out


def check_resources(config: dict, messages: list[str]) -> None:
    """What the schema cannot check: class and model names, a GPU type for jobs without a GPU."""
    block = config["resources"]
    classes = block["classes"]
    if block["default_class"] not in classes:
        messages.append(f"config key 'resources.default_class': no class {block['default_class']!r} "
                        f"under resources.classes (known: {', '.join(classes)})")
    for name, cls in classes.items():
        # SLURM's plugin turns a GPU type with gpu=0 into `--gpus=<type>:0`
        per_rule = cls.get("per_rule") or {}
        for where, override in [("", {}), *((f".per_rule.{g}", v) for g, v in per_rule.items()
                                             if {"gpu", "gpu_model"} & set(v))]:
            values = {**cls, **override}
            if values.get("gpu_model") and values["gpu"] == 0:
                messages.append(f"config key 'resources.classes.{name}{where}.gpu_model': a GPU type "
                                f"for jobs that ask for no GPU (gpu: 0); set gpu to 1 or more, or drop it")
    for model, cls in (block.get("models") or {}).items():
        if model not in config["models"]:
            messages.append(f"config key 'resources.models.{model}': unknown model "
                            f"(registered under models: {', '.join(config['models'])})")
        if cls not in classes:
            messages.append(f"config key 'resources.models.{model}': no class {cls!r} under "
                            f"resources.classes (known: {', '.join(classes)})")


# --- one GPU per job on a workstation ------------------------------------------------------------

LOG = logging.getLogger("editunlearn")
_held_locks: list = []  # open lock files: held for the life of the job's process


def visible_gpu_count() -> int:
    """GPUs on this machine, counted without initialising CUDA (so CUDA_VISIBLE_DEVICES can still
    be set afterwards)."""
    proc_dir = Path("/proc/driver/nvidia/gpus")
    if proc_dir.is_dir():
        return len(list(proc_dir.iterdir()))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def claim_gpus(requested, device: str, lock_dir: str | os.PathLike | None = None,
               count: int | None = None, poll_seconds: float = 5.0) -> list[int] | None:
    """Pin this job to ``requested`` GPUs no other job of this machine holds, by setting
    CUDA_VISIBLE_DEVICES before CUDA starts. ``snakemake --resources gpu=N`` only bounds how many
    GPU jobs run at once; this makes them use different GPUs. An exclusive lock file per GPU is
    held until the process ends (killed included), so a crashed job frees its GPU.

    On a one-GPU machine the lock makes GPU jobs take turns (two 7B jobs on one card run out of
    memory) even when Snakemake was not told ``--resources gpu=1``.

    Does nothing (returns None) where the choice is already made: a scheduler or the user set
    CUDA_VISIBLE_DEVICES (SLURM does for the GPUs it allocated), ``device`` names a device or the
    CPU, the job asks for no GPU, or the machine has none."""
    requested = int(requested or 0)
    if requested < 1 or device not in ("auto", "cuda"):
        return None
    if "CUDA_VISIBLE_DEVICES" in os.environ or "SLURM_JOB_ID" in os.environ:
        return None
    count = visible_gpu_count() if count is None else count
    if count < 1:
        return None
    if requested > count:
        raise RuntimeError(f"the job asks for {requested} GPUs (config resources:), this machine "
                           f"has {count}")
    lock_dir = Path(lock_dir or os.environ.get("EDITUNLEARN_GPU_LOCK_DIR")
                    or Path(tempfile.gettempdir()) / f"editunlearn-gpu-locks-{os.getuid()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        got = []
        for index in range(count):
            handle = open(lock_dir / f"gpu{index}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            got.append((index, handle))
            if len(got) == requested:
                break
        if len(got) == requested:
            break
        for _, handle in got:
            handle.close()  # releases the lock
        if not waited:
            LOG.info("all %d GPUs are held by other jobs; waiting for %d to free up", count, requested)
            waited = True
        time.sleep(poll_seconds)
    indices = [index for index, _ in got]
    for index, handle in got:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held_locks.append(handle)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, indices))
    LOG.info("GPU(s) %s of %d claimed for this job (CUDA_VISIBLE_DEVICES)", indices, count)
    return indices
