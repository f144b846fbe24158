"""Datasets: fetch the pinned source files (mirror first, then the network), check sha256, split.

The factual dataset (217 QA, pretrained knowledge) is TOFU real_authors + world_facts as PISTOL
ships it; PISTOL sample dataset 1 has 400 QA in 20 edges (contracts) of 20 QA each.
"""

from __future__ import annotations

import hashlib
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_path, read_json, write_json

_PISTOL = "https://raw.githubusercontent.com/bill-shen-BS/PISTOL/9851fb5e48836f329d86a04dcd466307cf6111c8/data"


@dataclass(frozen=True)
class SourceFile:
    name: str  # file name under resources/data/
    mirror_path: str  # path inside a mirror folder (the layout of ../shared/data)
    url: str
    sha256: str


SOURCES: dict[str, SourceFile] = {
    s.name: s
    for s in [
        SourceFile("factual_data.json", "pistol/factual_data.json", f"{_PISTOL}/factual_data.json",
                   "499c0cbdc34e967bfa5794c45a6b8aa192d25a2727748441d66821ff40deaf3f"),
        SourceFile("sample_data_1.json", "pistol/sample_data_1.json", f"{_PISTOL}/sample_data_1.json",
                   "0776b7c5b1c9973f36eab6edee527b37f3079f6ac61b81387e788b8cd25b6f3e"),
        SourceFile("idontknow.jsonl", "pistol/idontknow.jsonl", f"{_PISTOL}/idontknow.jsonl",
                   "eb9a1e32a6f4112088306e1a65d297240f75513dd5223b2acb326454675fd605"),
    ]
}

# dataset name -> source file of its QA pairs
DATASETS = {"factual": "factual_data.json", "pistol": "sample_data_1.json"}
REFUSALS = "idontknow.jsonl"
PISTOL_EDGE_SIZE = 20


class DataError(RuntimeError):
    pass


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, dest: str | Path, mirror: str | Path | None, allow_download: bool = True,
          timeout: float = 30.0) -> str:
    """Put source file ``name`` at ``dest`` with a verified checksum; return where it came from."""
    src = SOURCES[name]
    dest = Path(dest)
    tried: list[str] = []
    if mirror:
        candidate = Path(mirror) / src.mirror_path
        if candidate.is_file():
            digest = sha256_of(candidate)
            if digest != src.sha256:
                raise DataError(
                    f"{name}: checksum mismatch for the mirror copy {candidate}\n"
                    f"  expected sha256 {src.sha256}\n  found    sha256 {digest}\n"
                    f"  The mirror file is corrupt or a different version. Restore it, or remove it "
                    f"so the pipeline downloads {src.url}")
            with atomic_path(dest) as tmp:
                tmp.write_bytes(candidate.read_bytes())
            return str(candidate)
        tried.append(f"mirror {candidate} (not found)")
    else:
        tried.append("no mirror configured (data.mirror)")
    if not allow_download:
        raise DataError(f"{name}: not found. Looked in: {'; '.join(tried)}. Downloading is off "
                        f"(data.download: false). Put the file at the mirror path or enable downloads.")
    try:
        with urllib.request.urlopen(src.url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as exc:
        tried.append(f"{src.url} ({exc})")
        raise DataError(
            f"{name}: could not get the file. Looked in: {'; '.join(tried)}.\n"
            f"  Without network, copy the file to the mirror folder as {src.mirror_path} "
            f"(set data.mirror in config.yaml), or download it by hand to {dest}.") from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != src.sha256:
        raise DataError(f"{name}: checksum mismatch for the download from {src.url}\n"
                        f"  expected sha256 {src.sha256}\n  found    sha256 {digest}\n"
                        f"  The upstream file changed or the download was corrupted; nothing was written.")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)
    return src.url


def verify(path: str | Path) -> None:
    """Check a fetched file still has its pinned checksum (catches edits after the download)."""
    path = Path(path)
    src = SOURCES[path.name]
    digest = sha256_of(path)
    if digest != src.sha256:
        raise DataError(f"{path}: checksum mismatch (expected {src.sha256}, found {digest}). "
                        f"Delete the file and rerun to fetch it again.")


def load_qa(dataset: str, data_dir: str | Path) -> list[dict]:
    """QA items of a dataset with stable ids ``<dataset>-<index>``."""
    path = Path(data_dir) / DATASETS[dataset]
    verify(path)
    rows = read_json(path)
    items = []
    for i, row in enumerate(rows):
        item = {"id": f"{dataset}-{i:03d}", "question": row["question"], "answer": row["answer"]}
        if "edge" in row:
            item["edge"] = row["edge"]
        items.append(item)
    return items


def load_refusals(data_dir: str | Path) -> list[str]:
    path = Path(data_dir) / REFUSALS
    verify(path)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_split(dataset: str, n_forget: int, seed: int, data_dir: str | Path) -> dict:
    """Deterministic forget/retain split.

    factual: ``n_forget`` items sampled with ``seed``; the rest retain.
    pistol: forget = whole edges (20 QA each) sampled with ``seed``; the rest retain; the 217
    factual QA are the ``locality`` split (pretrained knowledge the fine-tune must not destroy).
    """
    items = load_qa(dataset, data_dir)
    rng = random.Random(seed)
    if dataset == "pistol":
        edges = list(dict.fromkeys(item["edge"] for item in items))
        if n_forget % PISTOL_EDGE_SIZE or not 0 < n_forget < len(items):
            raise ValueError(f"pistol forget size must be a multiple of {PISTOL_EDGE_SIZE} "
                             f"below {len(items)}, got {n_forget}")
        forget_edges = set(rng.sample(edges, n_forget // PISTOL_EDGE_SIZE))
        forget = [it for it in items if it["edge"] in forget_edges]
        meta = {"forget_edges": sorted(forget_edges)}
    else:
        if not 0 < n_forget < len(items):
            raise ValueError(f"{dataset} forget size must be in 1..{len(items) - 1}, got {n_forget}")
        chosen = set(rng.sample(range(len(items)), n_forget))
        forget = [it for i, it in enumerate(items) if i in chosen]
        meta = {}
    forget_ids = {it["id"] for it in forget}
    split = {
        "dataset": dataset, "seed": seed, "n_forget": len(forget),
        "n_retain": len(items) - len(forget), **meta,
        "forget": forget, "retain": [it for it in items if it["id"] not in forget_ids],
    }
    if dataset == "pistol":
        split["locality"] = load_qa("factual", data_dir)
        split["n_locality"] = len(split["locality"])
    return split


def make_idk_targets(split: dict, refusals: list[str], seed: int) -> list[dict]:
    """One refusal per forget item: a seeded random line of the refusal list (paper eq. 7, TOFU)."""
    rng = random.Random(f"idk-{seed}")
    return [{"id": it["id"], "target": rng.choice(refusals), "source": "idk"} for it in split["forget"]]


def write_split(path: str | Path, split: dict) -> None:
    write_json(path, split)


def split_items(split: dict, name: str) -> list[dict]:
    if name not in split:
        raise KeyError(f"split file has no {name!r} split (has: "
                       f"{[k for k, v in split.items() if isinstance(v, list) and v and isinstance(v[0], dict)]})")
    return split[name]

