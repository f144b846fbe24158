"""Shared pieces of every method that trains with gradients (unlearning baselines, fine-tuning,
editors' value optimisation): batches of chat-formatted QA with the loss on answer tokens only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .prompts import PromptFormatter, answer_ids

IGNORE = -100


@dataclass
class QABatch:
    input_ids: torch.Tensor  # (B, T), right padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE outside the answer

    def to(self, device) -> "QABatch":
        return QABatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def collate_qa(formatter: PromptFormatter, pairs: list[tuple[str, str]], append_eos: bool = True) -> QABatch:
    """Tokenise (question, answer) pairs as evaluation does; labels cover the answer (and the
    end-of-turn token, so a trained answer also stops)."""
    tokenizer = formatter.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs, label_seqs = [], []
    for question, answer in pairs:
        prompt = formatter.prompt_ids(question)
        target = answer_ids(tokenizer, answer)
        if append_eos and tokenizer.eos_token_id is not None:
            target = target + [tokenizer.eos_token_id]
        seqs.append(prompt + target)
        label_seqs.append([IGNORE] * len(prompt) + target)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for row, (seq, lab) in enumerate(zip(seqs, label_seqs)):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
        labels[row, :len(lab)] = torch.tensor(lab)
    return QABatch(ids, mask, labels)


def answer_logprobs(model, batch: QABatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each answer token given what precedes it, shape (B, P), and the mask
    of the positions that count. Only the positions that predict an answer token in some row are
    projected onto the vocabulary: that projection is the costliest matmul of a small model, and
    prompts are several times longer than answers."""
    targets = batch.labels[:, 1:]
    scored = targets != IGNORE
    keep = scored.any(0).nonzero().squeeze(-1)  # state t predicts token t + 1
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   logits_to_keep=keep).logits
    kept_targets, mask = targets[:, keep], scored[:, keep]
    safe = kept_targets.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_nll(model, batch: QABatch) -> torch.Tensor:
    """Mean answer-token NLL of each example, shape (B,)."""
    logp, mask = answer_logprobs(model, batch)
    return -logp.sum(1) / mask.sum(1).clamp(min=1)


def sequence_logprob(model, batch: QABatch) -> torch.Tensor:
    """Summed answer-token log-probability of each example, shape (B,) (for DPO/NPO ratios)."""
    logp, _ = answer_logprobs(model, batch)
    return logp.sum(1)


def kl_on_batch(current, reference, batch: QABatch) -> torch.Tensor:
    """KL(reference || current) of next-token distributions, averaged over the real tokens of the
    batch (paper eq. 6 sums over every position of the retain sample, not only its answer)."""
    logits = current(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    with torch.no_grad():
        ref_logits = reference(input_ids=batch.input_ids,
                               attention_mask=batch.attention_mask).logits[:, :-1]
    mask = batch.attention_mask[:, 1:].bool()
    kl = F.kl_div(torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1),
                  log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum()


class DivergenceError(RuntimeError):
    pass


def check_finite(loss: torch.Tensor, step: int, what: str = "loss") -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergenceError(f"{what} became {value} at step {step}: training diverged; lower the "
                              f"learning rate or check the data. No patch was written.")
