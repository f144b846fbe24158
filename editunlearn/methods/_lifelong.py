"""Shared machinery of the lifelong editors GRACE and WISE: an adaptor that sits on one MLP
down-projection, the per-sequence bookkeeping that keeps its routing correct under padding and the
KV cache, hyper-parameter checks, edit batches and TIES merging.

Routing is causal by construction. Each adaptor decides, at every position t, from tokens <= t
only (GRACE: the first position that hits a key; WISE: the running maximum of the activation
score). Such a rule gives the same answer whether a sequence is processed in one pass (training,
teacher-forced scoring), token by token with the KV cache (generation), or recomputed from scratch
each step (no cache), and it needs no knowledge of where a prompt ends. The only state carried
between forward calls is one running value per row, reset when a call starts new sequences.
"""

from __future__ import annotations

import contextlib
import copy
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..training import IGNORE, collate_qa

# Out-of-scope prompts for WISE's activation margin when no retain data is used: everyday
# requests plus general-knowledge questions in the same question form as the datasets but on
# topics neither dataset covers (checked against both; see tests/test_lifelong.py), playing the
# role of the unrelated questions WISE's paper draws from another QA set.
NEUTRAL_PROMPTS = [
    "Write a short poem about the sea.",
    "How do I boil an egg?",
    "Give me three tips for a good night's sleep.",
    "Translate 'good morning' into French.",
    "Suggest a name for a pet goldfish.",
    "Explain what a verb is.",
    "List four fruits that are red.",
    "Write a sentence using the word 'umbrella'.",
    "What should I pack for a day at the beach?",
    "Spell the word 'necessary' backwards.",
    "Recommend a simple vegetarian dinner.",
    "Explain how to tie a shoelace.",
    "How many legs does a spider have?",
    "What is the chemical symbol for sodium?",
    "What is the freezing point of water in degrees Celsius?",
    "How many sides does a hexagon have?",
    "What do bees make from nectar?",
    "What colour do you get by mixing blue and yellow?",
    "What is the main ingredient of guacamole?",
    "Which organ pumps blood around the human body?",
    "What does a thermometer measure?",
    "Which sport is played with a shuttlecock?",
    "What is the plural of 'mouse'?",
    "Who composed the Moonlight Sonata?",
    "Who invented the telephone?",
    "Who discovered penicillin?",
    "Who developed the first polio vaccine?",
    "What is the square root of 81?",
    "Which gas do humans breathe out?",
    "How many strings does a standard guitar have?",
    "What is the largest organ of the human body?",
    "What is a baby kangaroo called?",
    "In chess, which piece moves only diagonally?",
    "How many minutes are there in an hour?",
]


# --- hyper-parameters ----------------------------------------------------------------------------

def check_hparams(method: str, defaults: dict, given: dict, choices: dict | None = None) -> dict:
    """Defaults completed with ``given``; unknown keys, wrong types and values outside ``choices``
    raise ValueError naming the key."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{method}: unknown hyper-parameter(s) {unknown} "
                         f"(known: {', '.join(sorted(defaults))})")
    hp = {**copy.deepcopy(defaults), **given}
    for key, value in hp.items():
        default = defaults[key]
        if default is None or value is None:
            continue
        if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, (int, float)) and not isinstance(value, (int, float))) or (
                isinstance(default, (str, list)) and not isinstance(value, type(default))):
            raise ValueError(f"{method}: hyper-parameter '{key}' should be a "
                             f"{type(default).__name__} like {default!r}, got {value!r}")
    for key, allowed in (choices or {}).items():
        if hp[key] not in allowed:
            raise ValueError(f"{method}: hyper-parameter '{key}' must be one of {list(allowed)}, "
                             f"got {hp[key]!r}")
    return hp


def positive(method: str, hp: dict, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = hp[key]
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{method}: hyper-parameter '{key}' must be "
                             f"{'>= 0' if allow_zero else '> 0'}, got {value!r}")


def default_layer(num_layers: int) -> int:
    """The 7B/8B settings edit layer 27 of 32; keep that relative depth for other models."""
    return max(0, min(num_layers - 1, (num_layers * 27) // 32))


def resolve_inner_module(method: str, model: nn.Module, spec, inner_params) -> str:
    """Module name of the edited down-projection from EasyEdit-style ``inner_params`` (one entry,
    e.g. ``model.layers[27].mlp.down_proj.weight``); null = the spec's ``mlp_down`` at the default
    layer."""
    if inner_params is None:
        if not spec.modules.get("mlp_down"):
            raise ValueError(f"{method}: set hyper-parameter 'inner_params' (the model spec has no "
                             f"'mlp_down' module template)")
        return spec.module_name("mlp_down", default_layer(spec.num_layers))
    if not isinstance(inner_params, list) or len(inner_params) != 1 or not isinstance(inner_params[0], str):
        raise ValueError(f"{method}: hyper-parameter 'inner_params' must be a list with one "
                         f"parameter or module name, got {inner_params!r}")
    name = re.sub(r"\[(\d+)\]", r".\1", inner_params[0])
    name = name[: -len(".weight")] if name.endswith(".weight") else name
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        example = (spec.module_name("mlp_down", default_layer(spec.num_layers))
                   if spec.modules.get("mlp_down") else "model.layers.N.mlp.down_proj")
        raise ValueError(f"{method}: hyper-parameter 'inner_params' names {inner_params[0]!r}, "
                         f"which is not a linear layer of this model (e.g. {example})")
    return name


# --- per-call sequence bookkeeping ---------------------------------------------------------------

class SequenceTracker:
    """Read at the top of the decoder stack before every forward call: which positions of the call
    are real tokens (left padding, right padding) and whether the call continues the sequences of
    the previous call through the KV cache or starts new ones."""

    ATTR = "_editunlearn_sequence_tracker"

    def __init__(self):
        self.continuing = False
        self.mask: torch.Tensor | None = None  # (B, T) bool, True = real token; None = all real
        self.prompt_lengths: torch.Tensor | None = None  # (B,) set by ``prompt_lengths``

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        length = (ids if ids is not None else embeds).shape[1]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        self.continuing = int(past) > 0
        mask = kwargs.get("attention_mask")
        # a 2-D mask covers cached + new positions; other shapes (custom 4-D masks) say nothing
        # simple about padding, so every position counts as real
        self.mask = mask[:, -length:].bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def real(self, batch: int, length: int, device) -> torch.Tensor:
        if self.mask is None or self.mask.shape != (batch, length):
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        return self.mask.to(device)

    def prompt(self, batch: int, length: int, device) -> torch.Tensor:
        """Which positions of this call belong to the prompt: none in a call that continues
        cached sequences (generated tokens), the first ``prompt_lengths`` of each right-padded
        row where a scorer said so, else all of them (the prefill call of generation)."""
        if self.continuing:
            return torch.zeros(batch, length, dtype=torch.bool, device=device)
        lengths = self.prompt_lengths
        if lengths is None or lengths.shape != (batch,):
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        return torch.arange(length, device=device)[None, :] < lengths.to(device)[:, None]


def sequence_tracker(model: nn.Module) -> SequenceTracker:
    """The model's tracker, hooked on the decoder stack (``model.base_model``) once: both
    ``model.generate`` and the teacher-forced scorer (which calls ``base_model`` directly) pass
    through it."""
    stack = model.base_model
    tracker = getattr(stack, SequenceTracker.ATTR, None)
    if tracker is None:
        tracker = SequenceTracker()
        stack.register_forward_pre_hook(tracker, with_kwargs=True)
        setattr(stack, SequenceTracker.ATTR, tracker)
    return tracker


@contextlib.contextmanager
def prompt_lengths(model: nn.Module, lengths: list[int]):
    """Tell the lifelong adaptors (if the model has any) how long the prompts of a one-pass
    teacher-forced call (prompt + answer, right padded) are, so routing decided on the prompt
    alone scores the answer as generation would produce it."""
    tracker = getattr(model.base_model, SequenceTracker.ATTR, None)
    if tracker is None:
        yield
        return
    tracker.prompt_lengths = torch.as_tensor(lengths)
    try:
        yield
    finally:
        tracker.prompt_lengths = None


class DownProjAdaptor(nn.Module):
    """Base of the GRACE and WISE adaptors: attached to one ``nn.Linear`` as its child module
    ``editunlearn_adaptor`` (so it moves with ``model.to``) and applied by a forward hook, so the
    model's parameter names stay as they were and tensor patches still apply by name."""

    CHILD = "editunlearn_adaptor"

    def __init__(self, tracker: SequenceTracker):
        super().__init__()
        self.tracker = tracker
        self._carry = None  # per-row running state from the previous call (KV-cache decoding)

    def attach(self, model: nn.Module, module_name: str) -> "DownProjAdaptor":
        linear = model.get_submodule(module_name)
        if hasattr(linear, self.CHILD):
            raise RuntimeError(f"{module_name} already carries an editunlearn adaptor "
                               f"({type(getattr(linear, self.CHILD)).__name__}); apply one "
                               f"lifelong-editing patch per layer")
        linear.add_module(self.CHILD, self)
        # a bound method, not a closure: deepcopy of the model rebinds it to the copied adaptor
        linear.register_forward_hook(self._hook)
        return self

    def _hook(self, module, inputs, output):
        return self.route(inputs[0], output)

    def carried(self, batch: int, fresh, explicit: bool = False):
        """The running state to start this call from: the previous call's if this call continues
        its sequences (KV cache), else ``fresh()``. ``explicit``: a direct call on whole
        sequences (editing), which starts fresh and must not disturb the carried state."""
        if explicit:
            return fresh()
        if self.tracker.continuing:
            if self._carry is None or self._carry.shape[-1] != batch:
                raise RuntimeError(
                    "a cached forward call reached the lifelong-editing adaptor without the "
                    "prefill call that started its sequences (or with another batch size); "
                    "run the model through model.generate / model.base_model so the sequence "
                    "tracker sees every call")
            return self._carry
        return fresh()

    def route(self, x: torch.Tensor, out: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output given its input ``x`` (B, T, d_in) and unedited output ``out``.
        ``real`` (B, T): which positions are tokens, for direct calls on whole sequences; None =
        called from the model's forward (the tracker knows the padding and the cache)."""
        raise NotImplementedError


def adaptor_of(model: nn.Module, module_name: str):
    return getattr(model.get_submodule(module_name), DownProjAdaptor.CHILD, None)


@contextlib.contextmanager
def capture_input(model: nn.Module, module_name: str):
    """Records the input of ``module_name`` on each call (a list of tensors)."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(module_name).register_forward_pre_hook(
        lambda mod, inputs: seen.append(inputs[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


# --- edit batches --------------------------------------------------------------------------------

class SuffixForward:
    """The model's forward pass from the edited down-projection on, for a fixed batch.

    Editing changes only the output of one down-projection, which is added to the residual
    stream of its layer; everything before it (its input, the residual it is added to, attention
    masks, rotary embeddings) is the same at every optimisation step. So one full pass records
    those, and each step reruns only the later layers, the final norm and the output projection
    at the positions that are scored: at layer 25 of SmolLM2's 30, about a tenth of a full pass.
    """

    def __init__(self, model: nn.Module, module_name: str, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor):
        stack = model.base_model
        layers, norm = getattr(stack, "layers", None), getattr(stack, "norm", None)
        if layers is None or norm is None:
            raise ValueError(f"{type(stack).__name__} has no 'layers'/'norm': the lifelong editors "
                             f"support Llama-style decoder stacks")
        prefix = next(name for name, mod in model.named_modules() if mod is layers)
        match = re.match(re.escape(prefix) + r"\.(\d+)\.", module_name)
        if match is None:
            raise ValueError(f"{module_name} is not inside a decoder layer ({prefix}.N)")
        index = int(match.group(1))
        self.model, self.later = model, list(layers)[index + 1:]
        self.norm, self.head = norm, model.get_output_embeddings()
        after = self.later[0] if self.later else norm
        seen = {}

        def take_input(mod, args, kwargs):
            seen["x"] = args[0].detach()

        def take_output(mod, args, out):
            seen["out"] = out.detach()

        def take_next(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen["next"] = (hidden.detach(), args[1:], dict(kwargs))

        linear = model.get_submodule(module_name)
        handles = [linear.register_forward_pre_hook(take_input, with_kwargs=True),
                   linear.register_forward_hook(take_output),  # after any adaptor's hook
                   after.register_forward_pre_hook(take_next, with_kwargs=True)]
        try:
            with torch.no_grad():
                stack(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        self.x = seen["x"]  # (B, T, d_in): the down-projection's input
        with torch.no_grad():
            bias = None if linear.bias is None else linear.bias.float()
            self.base_out = F.linear(self.x.float(), linear.weight.float(), bias)  # unedited output
        hidden, self.next_args, self.next_kwargs = seen["next"]
        # the stream the projection's output is added to; in float32, so that with the unedited
        # output it gives back exactly the recorded (e.g. bfloat16) hidden state
        self.residual = hidden.float() - seen["out"].float()
        self.dtype = hidden.dtype

    def hidden(self, new_out: torch.Tensor) -> torch.Tensor:
        """Final hidden states (after the last norm) with ``new_out`` as the projection's output."""
        hidden = (self.residual + new_out.float()).to(self.dtype)
        for layer in self.later:
            hidden = layer(hidden, *self.next_args, **self.next_kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.norm(hidden)


class EditBatch:
    """Edits as teacher-forced sequences (right padded): prompt + target + end of turn, scored on
    the target tokens, through a ``SuffixForward`` of the edited layer. ``last_prompt`` = index of
    each row's last prompt token."""

    def __init__(self, formatter, pairs: list[tuple[str, str]], model: nn.Module, module_name: str):
        device = next(model.parameters()).device
        batch = collate_qa(formatter, pairs)
        self.input_ids = batch.input_ids.to(device)
        self.attention_mask = batch.attention_mask.to(device)
        labels = batch.labels.to(device)
        self.real = self.attention_mask.bool()
        self.last_prompt = (labels != IGNORE).float().argmax(1) - 1
        self.prompt_mask = (torch.arange(labels.shape[1], device=device)[None]
                            <= self.last_prompt[:, None])
        # the state at position t predicts token t + 1: score only those that predict a target
        self.rows, self.cols = torch.nonzero(labels[:, 1:] != IGNORE, as_tuple=True)
        self.targets = labels[:, 1:][self.rows, self.cols]
        self.suffix = SuffixForward(model, module_name, self.input_ids, self.attention_mask)
        self.x, self.base_out = self.suffix.x, self.suffix.base_out

    def target_stats(self, new_out: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Mean target-token NLL with ``new_out`` as the projection's output, and whether greedy
        decoding would reproduce every target token (all of them the top prediction)."""
        hidden = self.suffix.hidden(new_out)[self.rows, self.cols]
        logits = self.suffix.head(hidden).float()
        nll = F.cross_entropy(logits, self.targets)
        exact = bool((logits.argmax(-1) == self.targets).all())
        return nll, exact


def prompt_batch(formatter, questions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-formatted prompts alone (no answer), right padded: (input_ids, attention_mask)."""
    tokenizer = formatter.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs = [formatter.prompt_ids(q) for q in questions]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


@contextlib.contextmanager
def frozen(model: nn.Module):
    """No gradient for the model's own weights while an adaptor is trained (saves the backward
    pass into them); restores each parameter's flag afterwards."""
    flags = [(p, p.requires_grad) for n, p in model.named_parameters() if DownProjAdaptor.CHILD not in n]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def check_single_questions(method: str, ctx) -> None:
    if not ctx.forget:
        raise ValueError(f"{method}: no forget items to edit")
    if ctx.merge != 1:
        raise ValueError(f"{method}: query merging (setting suffix _m{ctx.merge}) is a technique for "
                         f"ROME/MEMIT; {method} keys its memory on single evaluated prompts, so a "
                         f"merged prompt would never be looked up. Use a setting without _m")


# --- TIES merging (Yadav et al. 2023) ------------------------------------------------------------

def ties_merge(task_vectors: list[torch.Tensor], density: float, weight: float = 1.0) -> torch.Tensor:
    """Merge task vectors (same shape) the TIES way: (1) trim each to its ``density`` fraction of
    largest-magnitude entries, (2) elect each entry's sign as the sign of the trimmed vectors' sum,
    (3) average, per entry, only the trimmed values that agree with the elected sign (zeros do
    not count); the result is scaled by ``weight``."""
    if not task_vectors:
        raise ValueError("ties_merge needs at least one task vector")
    if not 0 < density <= 1:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")
    stacked = torch.stack([t.float() for t in task_vectors])  # (k, ...)
    flat = stacked.reshape(len(task_vectors), -1)
    keep = max(1, int(round(density * flat.shape[1])))
    if keep < flat.shape[1]:
        trimmed = torch.zeros_like(flat)
        idx = flat.abs().topk(keep, dim=1).indices
        trimmed.scatter_(1, idx, flat.gather(1, idx))
    else:
        trimmed = flat
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    total = (trimmed * agree).sum(0)
    count = agree.sum(0).clamp(min=1)
    return (weight * total / count).reshape(stacked.shape[1:])
