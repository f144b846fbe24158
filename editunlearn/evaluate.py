"""Evaluation engine: batched greedy generation (left padding) and teacher-forced metrics (one
forward pass per batch, right padding so positions match the unpadded sequence)."""

from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from .methods._lifelong import prompt_lengths
from .metrics import rouge1_recall, summarize, token_metrics
from .prompts import PromptFormatter, answer_ids

__all__ = ["evaluate_items", "generate", "teacher_forced", "summarize"]


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], batch_size: int = 16,
             max_new_tokens: int = 48, progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy continuations of tokenised prompts, batched by similar length with left padding."""
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str | None] = [None] * len(prompts)
    batches = list(_batches(order, batch_size))
    for batch in tqdm(batches, desc=desc, disable=not progress, file=sys.stderr):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=pad, eos_token_id=eos)
        for row, i in enumerate(batch):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return outputs


@torch.no_grad()
def teacher_forced(model, tokenizer, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16,
                   top_k: int = 100, progress: bool = False, desc: str = "score") -> list[dict]:
    """Token metrics of each (prompt ids, answer ids) pair; only answer positions are scored."""
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[dict | None] = [None] * len(pairs)
    for batch in tqdm(list(_batches(order, batch_size)), desc=desc, disable=not progress,
                      file=sys.stderr):
        seqs = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        # project only the answer positions onto the vocabulary: prompts are ~10x longer than
        # answers, and the vocabulary projection dominates the cost of this pass
        with prompt_lengths(model, [len(pairs[i][0]) for i in batch]):
            hidden = model.base_model(input_ids=ids.to(device),
                                      attention_mask=mask.to(device)).last_hidden_state
        rows, spans = [], []
        for row, i in enumerate(batch):
            prompt, answer = pairs[i]
            if not answer:
                raise ValueError(f"item {i} has an empty answer: nothing to score")
            start = len(prompt) - 1  # the state at position t predicts token t + 1
            rows.append(hidden[row, start:start + len(answer)])
            spans.append(len(answer))
        logits = model.get_output_embeddings()(torch.cat(rows)).split(spans)
        for row, i in enumerate(batch):
            answer = torch.tensor(pairs[i][1], device=logits[row].device)
            results[i] = token_metrics(logits[row], answer, top_k=top_k)
    return results


def evaluate_items(model, tokenizer, items: list[dict], formatter: PromptFormatter,
                   batch_size: int = 16, max_new_tokens: int = 48, top_k: int = 100,
                   progress: bool = False, desc: str = "eval") -> list[dict]:
    """Per-item records: the item's fields, the greedy generation and every metric."""
    prompts = [formatter.prompt_ids(item["question"]) for item in items]
    answers = [answer_ids(tokenizer, item["answer"]) for item in items]
    generations = generate(model, tokenizer, prompts, batch_size, max_new_tokens, progress,
                           desc=f"{desc}: generate")
    scores = teacher_forced(model, tokenizer, list(zip(prompts, answers)), batch_size, top_k,
                            progress, desc=f"{desc}: score")
    records = []
    for item, generation, score in zip(items, generations, scores):
        records.append({**item, "generation": generation,
                        "rouge1_recall": rouge1_recall(item["answer"], generation), **score})
    return records
