"""Key statistics: the second moment C = E[k k^T] of the inputs k of MLP down-projections over a
text corpus, per layer. MEMIT weighs its updates by it, AlphaEdit projects onto its null space,
ROME optionally (mom2_adjustment) edits along C^-1 k.

Two pipeline artifacts, both computed once and shared by every job that needs them:

- a corpus of token chunks (``resources/corpora/<model>/<corpus>_n<N>.safetensors``), N chunks of
  ``sample_tokens`` tokens each, all the same length (no padding anywhere);
- the statistics (``resources/stats/<model>/<start>/<corpus>_n<N>.safetensors``) of one model
  (base or fine-tuned start) for every layer any configured editor needs, from ONE pass over
  the corpus that hooks all those layers at once and stops after the deepest.

Corpora:

``model_samples`` (the offline default): text sampled from the base model itself (nucleus
  sampling, top_p 0.95, from the token that starts pre-training documents). It needs no
  download, and it is drawn from the distribution the model learned from its own pre-training
  corpus -- which is what C stands for (the keys the model meets in the text it normally
  processes; the papers take Wikipedia as a proxy for that). On 2 CPU cores sampling costs
  several minutes for 1000 x 128 tokens, once per model; seconds on a GPU.
``wikitext`` (online, like the papers' Wikipedia): one chunk from the start of each of N seeded
  random articles of WikiText-103 (``datasets`` library, downloaded once into its cache).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..io import atomic_path

CORPORA = ("model_samples", "wikitext")
CORPUS_DEFAULTS = {"sample_tokens": 128, "batch_size": 64, "seed": 0, "top_p": 0.95,
                   "stats_batch_size": 16}
WIKITEXT = ("wikitext", "wikitext-103-raw-v1", "train")


class _Stop(Exception):
    """Raised by a hook to end a forward pass once what it needs has been read."""


def document_start_id(tokenizer) -> int:
    """The token a document starts with in pre-training: ``<|endoftext|>`` where the vocabulary
    has it (SmolLM2, GPT-style), else the BOS the tokenizer adds (Llama, Mistral), else eos."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return vocab["<|endoftext|>"]
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    return tokenizer.eos_token_id


def check_corpus(name: str) -> None:
    if name not in CORPORA:
        raise ValueError(f"hyper-parameter 'mom2_dataset' must be one of {', '.join(CORPORA)}, "
                         f"got {name!r}")


# ----------------------------------------------------------------------------------- corpora

@torch.no_grad()
def sample_corpus(model, tokenizer, n_samples: int, sample_tokens: int, batch_size: int = 64,
                  seed: int = 0, top_p: float = 0.95, progress: bool = True) -> torch.Tensor:
    """(n_samples, sample_tokens + 1) token ids: the document-start token, then text sampled from
    the model. End-of-sequence is suppressed (min_new_tokens), so every chunk is full length."""
    device = next(model.parameters()).device
    start = document_start_id(tokenizer)
    torch.manual_seed(seed)
    chunks = []
    n_batches = math.ceil(n_samples / batch_size)
    for b in tqdm(range(n_batches), desc="sample corpus", disable=not progress, file=sys.stderr):
        rows = min(batch_size, n_samples - b * batch_size)
        ids = torch.full((rows, 1), start, dtype=torch.long, device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             top_p=top_p, top_k=0, temperature=1.0, max_new_tokens=sample_tokens,
                             min_new_tokens=sample_tokens, pad_token_id=start)
        chunks.append(out[:, :sample_tokens + 1].cpu())
    return torch.cat(chunks).to(torch.int64)


def wikitext_corpus(tokenizer, n_samples: int, sample_tokens: int, seed: int = 0) -> torch.Tensor:
    """(n_samples, sample_tokens + 1): the document-start token and the first ``sample_tokens``
    tokens of each of ``n_samples`` seeded random WikiText-103 articles."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise RuntimeError("mom2_dataset 'wikitext' needs the `datasets` package (pip install "
                           "datasets) and network access once; the offline default is "
                           "'model_samples'") from None
    path, name, split = WIKITEXT
    lines = load_dataset(path, name, split=split)["text"]
    articles, current = [], []
    for line in lines:
        if re.match(r"^ = [^=].* = \n?$", line):  # a top-level heading starts an article
            if current:
                articles.append("".join(current))
            current = [line.strip(" =\n") + "\n"]
        elif line.strip():
            current.append(line)
    if current:
        articles.append("".join(current))
    order = torch.randperm(len(articles), generator=torch.Generator().manual_seed(seed)).tolist()
    start = document_start_id(tokenizer)
    chunks = []
    for i in order:
        ids = tokenizer(articles[i], add_special_tokens=False)["input_ids"]
        if len(ids) >= sample_tokens:
            chunks.append([start] + ids[:sample_tokens])
        if len(chunks) == n_samples:
            break
    if len(chunks) < n_samples:
        raise RuntimeError(f"WikiText has only {len(chunks)} articles of at least {sample_tokens} "
                           f"tokens, fewer than mom2_n_samples {n_samples}")
    return torch.tensor(chunks, dtype=torch.int64)


def save_corpus(path, ids: torch.Tensor, meta: dict) -> None:
    with atomic_path(path) as tmp:
        save_file({"input_ids": ids.contiguous()}, str(tmp),
                  metadata={"editunlearn_corpus": json.dumps(meta)})


def load_corpus(path) -> tuple[torch.Tensor, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("editunlearn_corpus", "{}"))
        return f.get_tensor("input_ids"), meta


# ------------------------------------------------------------------------------- statistics

@dataclass
class KeyStats:
    """Per layer, the uncentred second moment E[k k^T] of the down-projection input."""

    mom2: dict[int, torch.Tensor]
    n_tokens: int
    meta: dict = field(default_factory=dict)

    def layer(self, layer: int) -> torch.Tensor:
        if layer not in self.mom2:
            raise KeyError(f"key statistics {self.meta.get('path', '')} hold layers "
                           f"{sorted(self.mom2)}, not layer {layer}: the statistics rule computes "
                           f"the layers of every editor configured under methods:")
        return self.mom2[layer]

    def save(self, path) -> None:
        meta = {**self.meta, "n_tokens": self.n_tokens, "layers": sorted(self.mom2)}
        with atomic_path(path) as tmp:
            save_file({f"layer.{l}": m.float().contiguous().cpu() for l, m in self.mom2.items()},
                      str(tmp), metadata={"editunlearn_key_stats": json.dumps(meta)})

    @classmethod
    def load(cls, path, layers=None) -> "KeyStats":
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("editunlearn_key_stats")
            if raw is None:
                raise ValueError(f"{path} is not an editunlearn key-statistics file")
            meta = json.loads(raw)
            wanted = meta["layers"] if layers is None else list(layers)
            missing = sorted(set(wanted) - set(meta["layers"]))
            if missing:
                raise KeyError(f"key statistics {path} hold layers {meta['layers']}, not {missing}: "
                               f"rerun the key_stats rule (it computes the layers of every "
                               f"editor configured under methods:)")
            mom2 = {l: f.get_tensor(f"layer.{l}") for l in wanted}
        meta["path"] = str(path)
        return cls(mom2, meta["n_tokens"], meta)


@torch.no_grad()
def compute_key_stats(model, modules: dict[int, torch.nn.Module], ids: torch.Tensor,
                      batch_size: int = 16, progress: bool = True) -> KeyStats:
    """E[k k^T] of the input of each module (layer -> down_proj) over all tokens of ``ids``
    (n, T), in one pass per batch that stops right after the deepest hooked module."""
    if not modules:
        raise ValueError("no layers to compute key statistics for")
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    counts = {"tokens": 0}
    deepest = max(modules)

    def make_hook(layer):
        def hook(_module, args, _output):
            k = args[0].reshape(-1, args[0].shape[-1]).float()
            if layer not in sums:
                sums[layer] = torch.zeros(k.shape[1], k.shape[1], device=k.device)
            sums[layer].addmm_(k.T, k)
            if layer == deepest:
                raise _Stop

        return hook

    handles = [m.register_forward_hook(make_hook(l)) for l, m in modules.items()]
    try:
        for start in tqdm(range(0, len(ids), batch_size), desc="key statistics",
                          disable=not progress, file=sys.stderr):
            batch = ids[start:start + batch_size].to(device)
            try:
                model(input_ids=batch, use_cache=False)
            except _Stop:
                pass
            counts["tokens"] += batch.numel()
    finally:
        for h in handles:
            h.remove()
    mom2 = {l: (s / counts["tokens"]).cpu() for l, s in sorted(sums.items())}
    return KeyStats(mom2, counts["tokens"], {"n_samples": len(ids), "tokens_per_sample": ids.shape[1]})
