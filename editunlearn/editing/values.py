"""Target value optimisation: the vector that, written at the key token of an edited module's
output, makes the model emit the refusal target.

ROME (Meng et al. 2022) optimises the MLP output at one layer; MEMIT and AlphaEdit (Meng et al.
2023; Fang et al. 2025) optimise the residual stream after the last edited layer. Both minimise

    mean over contexts of NLL(target | context + prompt, with delta added at the key token)
    + kl_factor * KL(P_before || P_after) on the essence prompt "{subject} is a"
    + v_weight_decay * |delta|^2 / |v0|^2

with Adam (``v_lr``, ``v_num_grad_steps``), keeping |delta| <= clamp_norm_factor * |v0|.

Speed (exact, not an approximation): delta only changes positions from the key token on (causal
attention) and layers from the edited one up, so the prompt before the key token runs once,
without gradients, into a key/value cache, and so do the layers below the edited one for the
rest; each optimisation step runs only the tail (key token, template tail, target) through the
upper layers, and projects only the target positions onto the vocabulary. For a chat prompt
that is ~3x fewer tokens per step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .keys import _Stop, first_tensor, pad_id_of
from .requests import Context

STOP_NLL = 0.05  # stop early once the target's mean token NLL is below this (prob ~0.95/token)


@dataclass
class ValueResult:
    v0: torch.Tensor  # the module output at the key token of the bare prompt, before the edit
    delta: torch.Tensor
    nll_before: float
    nll_after: float
    steps: int

    @property
    def target(self) -> torch.Tensor:
        return self.v0 + self.delta


class _AddAt:
    """Forward hook adding ``delta`` to a module's output at given (row, position) pairs; it also
    records the unmodified value of the first pair (v0)."""

    def __init__(self, delta: torch.Tensor):
        self.delta = delta
        self.rows = self.cols = None
        self.first_value = None

    def __call__(self, _module, _args, output):
        if self.rows is None:
            return None
        hidden = first_tensor(output)
        if self.first_value is None:
            self.first_value = hidden[self.rows[0], self.cols[0]].detach().float().clone()
        hidden = hidden.clone()
        hidden[self.rows, self.cols] = hidden[self.rows, self.cols] + self.delta.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class _TailBatch:
    """Prompts split at their key token: the parts before it run once, without gradients, into a
    key/value cache; each step runs only the tails, from ``start_layer`` on (the layers below it
    do not see delta, so the tails' hidden states entering it are computed once too)."""

    def __init__(self, model, tokenizer, rows: list[tuple[list[int], list[int]]], start_layer: int):
        self.model = model
        device = next(model.parameters()).device
        pad = pad_id_of(tokenizer)
        width = max(len(prefix) for prefix, _ in rows)
        tail_width = max(len(tail) for _, tail in rows)
        prefix_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        tail_ids = torch.full((len(rows), tail_width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width + tail_width), dtype=torch.long)
        for r, (prefix, tail) in enumerate(rows):
            # prefixes left padded, tails right padded: positions stay absolute, and rotary
            # attention depends only on differences between real positions
            prefix_ids[r, width - len(prefix):] = torch.tensor(prefix, dtype=torch.long)
            tail_ids[r, :len(tail)] = torch.tensor(tail, dtype=torch.long)
            mask[r, width - len(prefix):width + len(tail)] = 1
        self.mask = mask.to(device)
        self.tail_ids = tail_ids.to(device)
        self.rows = torch.arange(len(rows), device=device)
        self.cols = torch.zeros(len(rows), dtype=torch.long, device=device)  # key token = tail[0]

        decoder = model.base_model
        layers = getattr(decoder, "layers", None)
        self.start_layer = start_layer if isinstance(layers, torch.nn.ModuleList) else 0
        self.cache = self.tail_hidden = None
        with torch.no_grad():
            if width:
                self.cache = decoder(input_ids=prefix_ids.to(device),
                                     attention_mask=self.mask[:, :width], use_cache=True).past_key_values
            if self.start_layer:
                found = {}

                def grab(_module, args, kwargs):
                    found["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()
                    raise _Stop

                handle = layers[self.start_layer].register_forward_pre_hook(grab, with_kwargs=True)
                try:
                    decoder(input_ids=self.tail_ids, attention_mask=self.mask,
                            past_key_values=copy.deepcopy(self.cache), use_cache=self.cache is not None)
                except _Stop:
                    pass
                finally:
                    handle.remove()
                self.tail_hidden = found["hidden"]

    def hidden(self, hook: "_AddAt") -> torch.Tensor:
        """Final hidden states of the tails, with ``hook`` adding delta at each key token."""
        hook.rows, hook.cols = self.rows, self.cols
        decoder = self.model.base_model
        cache = copy.deepcopy(self.cache) if self.cache is not None else None
        if self.tail_hidden is None:
            return decoder(input_ids=self.tail_ids, attention_mask=self.mask, past_key_values=cache,
                           use_cache=cache is not None).last_hidden_state
        layers = decoder.layers
        # run only the layers from start_layer on; each attention layer keeps its own index into
        # the cache, and the cache's first layer still holds just the prefix (positions, mask)
        decoder.layers = torch.nn.ModuleList(list(layers)[self.start_layer:])
        try:
            return decoder(inputs_embeds=self.tail_hidden, attention_mask=self.mask,
                           past_key_values=cache, use_cache=cache is not None).last_hidden_state
        finally:
            decoder.layers = layers


class _ValueBatch(_TailBatch):
    """The contexts of one request, each followed by the target, and the essence prompt as a last
    row: one pass per step (a separate pass for the short essence prompt cost a third of the
    edit time on CPU, where each pass reads every weight of the upper layers)."""

    def __init__(self, model, tokenizer, contexts: list[Context], target_ids: list[int],
                 kl: Context | None, start_layer: int):
        rows = [(c.input_ids[:c.lookup], c.input_ids[c.lookup:] + target_ids) for c in contexts]
        if kl is not None:
            rows.append((kl.input_ids[:kl.lookup], kl.input_ids[kl.lookup:]))
        super().__init__(model, tokenizer, rows, start_layer)
        device = self.tail_ids.device
        # in row r, tail position (prompt tail length - 1 + j) predicts target token j
        t_rows, t_cols = [], []
        for r, c in enumerate(contexts):
            first = len(c.input_ids) - c.lookup - 1
            t_rows += [r] * len(target_ids)
            t_cols += list(range(first, first + len(target_ids)))
        self.t_rows, self.t_cols = torch.tensor(t_rows, device=device), torch.tensor(t_cols, device=device)
        self.targets = torch.tensor(target_ids * len(contexts), device=device)
        self.kl_row = len(contexts) if kl is not None else None
        self.kl_col = len(rows[-1][1]) - 1

    def losses(self, hook: "_AddAt") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean token NLL of the target over the contexts, the essence prompt's next-token
        log-probabilities or None)."""
        hidden = self.hidden(hook)
        head = self.model.get_output_embeddings()
        rows, cols = self.t_rows, self.t_cols
        if self.kl_row is not None:
            rows = torch.cat([rows, rows.new_tensor([self.kl_row])])
            cols = torch.cat([cols, cols.new_tensor([self.kl_col])])
        logp = torch.log_softmax(head(hidden[rows, cols]).float(), -1)
        n = len(self.targets)
        nll = -logp[:n].gather(1, self.targets[:, None]).mean()
        return nll, (logp[n] if self.kl_row is not None else None)


def optimize_value(model, tokenizer, module, contexts: list[Context], target_ids: list[int],
                   kl_context: Context | None, hp: dict, start_layer: int = 0, log=None) -> ValueResult:
    """Optimise delta added to ``module``'s output at the key token of every context (the first
    context must be the bare prompt: v0 is read there). ``start_layer``: the index of the
    decoder layer that contains ``module`` (layers below it are not rerun). The model's weights
    are not changed."""
    device = next(model.parameters()).device
    hidden_size = model.get_output_embeddings().weight.shape[1]
    delta = torch.zeros(hidden_size, device=device, requires_grad=True)
    hook = _AddAt(delta)
    use_kl = kl_context is not None and hp["kl_factor"] > 0
    handle = module.register_forward_hook(hook)
    try:
        hook.rows = None
        # the bare prompt's row comes first, so v0 is read from it (_AddAt records the first pair)
        batch = _ValueBatch(model, tokenizer, contexts, target_ids, kl_context if use_kl else None,
                            start_layer)
        optimizer = torch.optim.Adam([delta], lr=hp["v_lr"])
        nll_before = nll_value = math.nan
        kl_before = None
        steps = 0
        for step in range(hp["v_num_grad_steps"]):
            optimizer.zero_grad(set_to_none=True)
            nll, kl_logp = batch.losses(hook)
            v0 = hook.first_value
            loss = nll
            if kl_logp is not None:
                if kl_before is None:  # delta is 0 at the first step: the unedited distribution
                    kl_before = kl_logp.detach()
                loss = loss + hp["kl_factor"] * torch.sum(kl_before.exp() * (kl_before - kl_logp))
            loss = loss + hp["v_weight_decay"] * delta.pow(2).sum() / v0.pow(2).sum().clamp_min(1e-12)
            nll_value = float(nll.detach())
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"value optimisation diverged (loss {float(loss.detach())}) "
                                         f"at step {step}: lower v_lr")
            if step == 0:
                nll_before = nll_value
            if nll_value < STOP_NLL:
                break
            loss.backward()
            optimizer.step()
            steps = step + 1
            with torch.no_grad():
                limit = hp["clamp_norm_factor"] * v0.norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
        if steps == hp["v_num_grad_steps"]:  # the last step's effect, measured
            with torch.no_grad():
                nll_value = float(batch.losses(hook)[0])
    finally:
        handle.remove()
    if log is not None:
        log.debug("value optimisation: NLL %.3f -> %.3f in %d steps, |delta|/|v0| %.3f",
                  nll_before, nll_value, steps, float(delta.detach().norm() / hook.first_value.norm()))
    return ValueResult(hook.first_value, delta.detach().clone(), nll_before, nll_value, steps)
