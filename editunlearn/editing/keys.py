"""Reading a module's input or output at the key token of tokenised prompts (forward passes only).

The forward pass stops right after the module that is read: nothing deeper is needed, which makes
reading a key at layer 5 of 30 about six times cheaper than a full pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from .stats import _Stop

if TYPE_CHECKING:
    from .requests import Context


def first_tensor(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def stop_after(module):
    """Within the block, a forward pass ends (with ``_Stop``) right after ``module`` ran."""

    def hook(_module, _args, _output):
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def read_at(model, tokenizer, module, contexts: list[Context], kind: str = "input",
            batch_size: int = 32) -> torch.Tensor:
    """The module's ``input`` (first positional argument) or ``output`` at each context's lookup
    token, as float32 rows (one per context)."""
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        ids, mask = pad_right([c.input_ids for c in chunk], pad_id_of(tokenizer), device)
        lookups = torch.tensor([c.lookup for c in chunk], device=device)
        found = {}

        def hook(_module, args, output):
            value = args[0] if kind == "input" else first_tensor(output)
            found["value"] = value[torch.arange(len(chunk), device=device), lookups].float()
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "value" not in found:
            raise RuntimeError(f"module {module!r} did not run in the model's forward pass")
        rows.append(found["value"])
    return torch.cat(rows)


def request_keys(model, tokenizer, down_proj, contexts_per_request: list[list[Context]]) -> torch.Tensor:
    """ROME's key k*: the down-projection input at the key token, averaged over each request's
    contexts (prefix variants). Shape (d_ff, n_requests)."""
    flat = [c for contexts in contexts_per_request for c in contexts]
    values = read_at(model, tokenizer, down_proj, flat, "input")
    keys, start = [], 0
    for contexts in contexts_per_request:
        keys.append(values[start:start + len(contexts)].mean(0))
        start += len(contexts)
    return torch.stack(keys, dim=1)
