"""The sequential editing loop shared by ROME, MEMIT and AlphaEdit, and their common
hyper-parameters (EasyEdit's names, so settings carry over).

Unlearning T forget items = T / merge edit requests (query merging joins ``merge`` questions into
one request), applied in order, each to the model the previous ones left (paper §4: sequential
editing). ROME edits one request at a time; MEMIT and AlphaEdit take ``batch_size`` requests per
update (1 = sequential). The state that edits carry forward (AlphaEdit's null-space projections and
accumulated keys) lives in the ``EditRun`` of one ``unlearn`` call, never in module globals, and
nothing is written to disk: the job saves the returned patch (the changed down-projections).
"""

from __future__ import annotations

import math
import statistics
import time
from abc import abstractmethod

import torch

from ..methods import Method, UnlearnContext
from ..patch import Patch
from ..prompts import answer_ids
from .keys import pad_right, pad_id_of
from .requests import (FACT_TOKENS, SUBJECTS, Context, Request, build_requests, kl_prompt,
                       sample_prefixes, tokenize_context)
from .stats import CORPORA, KeyStats

COMMON_DEFAULTS = {
    "layers": [5],
    # key token: see editing/requests.py; the whole question keys every edit on its final '?'
    "subject": "entity",
    # with query merging (setting _m<k>, k > 1): the merged prompt's final '?' (see requests.py)
    "merged_subject": "question",
    "fact_token": "subject_last",
    "v_num_grad_steps": 25,
    "v_lr": 0.5,
    "v_weight_decay": 1e-3,
    "clamp_norm_factor": 4.0,
    "kl_factor": 0.0625,
    # [[tokens, count], ...] of sampled text put before the question; [] = the bare prompt only
    "context_template_length_params": [],
    "mom2_dataset": "model_samples",
    "mom2_n_samples": 1000,  # paper B.4
    # null = the model's `modules.mlp_down` / `modules.layer` templates from the config
    "rewrite_module_tmp": None,
    "layer_module_tmp": None,
}


class HyperParameterError(ValueError):
    pass


class Prepared:
    """A request tokenised for editing: its contexts (bare prompt first), essence prompt, target."""

    def __init__(self, request: Request, contexts: list[Context], kl: Context, target_ids: list[int]):
        self.request, self.contexts, self.kl, self.target_ids = request, contexts, kl, target_ids


class EditRun:
    """Everything one ``unlearn`` call shares between its edits."""

    def __init__(self, method: "LocateEditMethod", ctx: UnlearnContext, stats: KeyStats | None):
        self.method, self.ctx, self.hp, self.stats = method, ctx, method.hparams, stats
        self.model, self.tokenizer, self.log = ctx.model, ctx.tokenizer, ctx.log
        rewrite = self.hp["rewrite_module_tmp"] or ctx.spec.modules.get("mlp_down")
        layer = self.hp["layer_module_tmp"] or ctx.spec.modules.get("layer")
        if not rewrite or "{}" not in rewrite:
            raise HyperParameterError(f"{method.name}: no down-projection module template: set "
                                      f"models.{ctx.spec.name}.modules.mlp_down (e.g. "
                                      f"'model.layers.{{}}.mlp.down_proj')")
        self.rewrite_tmp, self.layer_tmp = rewrite, layer
        self.state: dict = {}  # method-specific state carried across edits (AlphaEdit)

    def down_proj(self, layer: int):
        return self.model.get_submodule(self.rewrite_tmp.format(layer))

    def block(self, layer: int):
        if not self.layer_tmp:
            raise HyperParameterError(f"{self.method.name}: no layer module template: set "
                                      f"models.{self.ctx.spec.name}.modules.layer")
        return self.model.get_submodule(self.layer_tmp.format(layer))

    def weight(self, layer: int) -> torch.nn.Parameter:
        return self.down_proj(layer).weight

    def add_to_weight(self, layer: int, delta: torch.Tensor) -> None:
        if not torch.isfinite(delta).all():
            raise FloatingPointError(f"{self.method.name}: the update of layer {layer} is not "
                                     f"finite; check the hyper-parameters (v_lr, clamp_norm_factor)")
        weight = self.weight(layer)
        with torch.no_grad():
            weight.add_(delta.to(weight.device, weight.dtype))


@torch.no_grad()
def target_nll(model, tokenizer, context: Context, target_ids: list[int]) -> float:
    """Mean token NLL of the target after the prompt (teacher forced), with the model as it is."""
    device = next(model.parameters()).device
    ids, _ = pad_right([context.input_ids + target_ids], pad_id_of(tokenizer), device)
    first = len(context.input_ids) - 1
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[0, first:first + len(target_ids)]).float()
    logp = torch.log_softmax(logits, -1)[torch.arange(len(target_ids)), torch.tensor(target_ids, device=device)]
    return float(-logp.mean())


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class LocateEditMethod(Method):
    """Base class of the three editors; subclasses define ``defaults`` and ``edit_batch``."""

    uses_retain = False
    defaults: dict = COMMON_DEFAULTS
    single_layer = False  # ROME edits exactly one layer
    batched = False  # MEMIT/AlphaEdit: ``batch_size`` requests per update

    def __init__(self, hparams: dict):
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise HyperParameterError(f"{self.name}: unknown hyper-parameter(s) {unknown} "
                                      f"(known: {', '.join(sorted(self.defaults))})")
        super().__init__({**self.defaults, **hparams})
        self.check_hparams()

    # ------------------------------------------------------------------ hyper-parameters

    def _fail(self, key: str, wanted: str) -> None:
        raise HyperParameterError(f"{self.name}: hyper-parameter '{key}' must be {wanted}, got "
                                  f"{self.hparams[key]!r}")

    def check_hparams(self) -> None:
        hp = self.hparams
        layers = hp["layers"]
        if not isinstance(layers, list) or not layers or not all(_is_int(l) and l >= 0 for l in layers) \
                or len(set(layers)) != len(layers):
            self._fail("layers", "a non-empty list of distinct layer indices")
        if self.single_layer and len(layers) != 1:
            self._fail("layers", f"exactly one layer for {self.name} (e.g. [5])")
        for key in ("subject", "merged_subject"):
            if hp[key] not in SUBJECTS:
                self._fail(key, f"one of {', '.join(SUBJECTS)}")
        if hp["fact_token"] not in FACT_TOKENS:
            self._fail("fact_token", f"one of {', '.join(FACT_TOKENS)}")
        if not _is_int(hp["v_num_grad_steps"]) or hp["v_num_grad_steps"] < 1:
            self._fail("v_num_grad_steps", "an integer >= 1")
        for key in ("v_lr", "clamp_norm_factor"):
            if not _is_number(hp[key]) or not hp[key] > 0:
                self._fail(key, "a positive number")
        for key in ("v_weight_decay", "kl_factor"):
            if not _is_number(hp[key]) or hp[key] < 0:
                self._fail(key, "a number >= 0")
        ctp = hp["context_template_length_params"]
        if not isinstance(ctp, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(_is_int(x) and x > 0 for x in p) for p in ctp):
            self._fail("context_template_length_params", "a list of [tokens, count] pairs, e.g. [[5, 10]]")
        if hp["mom2_dataset"] not in CORPORA:
            self._fail("mom2_dataset", f"one of {', '.join(CORPORA)}")
        if not _is_int(hp["mom2_n_samples"]) or hp["mom2_n_samples"] < 1:
            self._fail("mom2_n_samples", "an integer >= 1")
        for key in ("rewrite_module_tmp", "layer_module_tmp"):
            if hp[key] is not None and (not isinstance(hp[key], str) or "{}" not in hp[key]):
                self._fail(key, "null or a module path template with '{}' for the layer")
        if self.batched and (not _is_int(hp["batch_size"]) or hp["batch_size"] < 1):
            self._fail("batch_size", "an integer >= 1")

    @classmethod
    def needs_key_stats(cls, hparams: dict) -> bool:
        """Whether a job with these hyper-parameters reads the key statistics (a rule input)."""
        return True

    @classmethod
    def key_stats_layers(cls, hparams: dict) -> list[int]:
        return sorted(hparams["layers"]) if cls.needs_key_stats(hparams) else []

    # ------------------------------------------------------------------------- editing

    @abstractmethod
    def edit_batch(self, run: EditRun, batch: list[Prepared]) -> dict:
        """Apply one update for ``batch`` to ``run.model`` in place; return loggable numbers."""

    def prepare(self, ctx: UnlearnContext, requests: list[Request], prefixes: list[str]) -> list[Prepared]:
        tok = ctx.tokenizer
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        prepared = []
        for request in requests:
            contexts = [tokenize_context(ctx.formatter, request, self.hparams["fact_token"], prefix)
                        for prefix in prefixes]
            # the refusal then end-of-turn, so the edited model also stops after it
            prepared.append(Prepared(request, contexts, kl_prompt(tok, request),
                                     answer_ids(tok, request.target) + eos))
        return prepared

    def unlearn(self, ctx: UnlearnContext) -> Patch:
        hp = self.hparams
        if not ctx.forget:
            raise ValueError(f"{self.name}: no forget items to unlearn")
        n_layers = getattr(ctx.model.config, "num_hidden_layers", None) or ctx.spec.num_layers
        bad = [l for l in hp["layers"] if l >= n_layers]
        if bad:
            raise HyperParameterError(f"{self.name}: hyper-parameter 'layers' {hp['layers']} names "
                                      f"layer(s) {bad}, but {ctx.spec.name} has {n_layers} layers "
                                      f"(set methods.{self.name}.per_model.{ctx.spec.name}.layers)")
        stats = None
        if self.needs_key_stats(hp):
            if not ctx.key_stats:
                raise ValueError(f"{self.name}: these hyper-parameters need key statistics "
                                 f"(mom2_dataset {hp['mom2_dataset']!r}), but the job got none")
            stats = KeyStats.load(ctx.key_stats, self.key_stats_layers(hp))
        run = EditRun(self, ctx, stats)
        if stats is not None and run.rewrite_tmp != ctx.spec.modules.get("mlp_down"):
            raise HyperParameterError(f"{self.name}: key statistics are computed at the model's "
                                      f"modules.mlp_down; set that instead of rewrite_module_tmp")

        requests = build_requests(ctx.forget, hp["subject"], ctx.merge, hp["merged_subject"])
        prefixes = sample_prefixes(ctx.model, ctx.tokenizer, hp["context_template_length_params"],
                                   ctx.seed)
        prepared = self.prepare(ctx, requests, prefixes)
        size = hp["batch_size"] if self.batched else 1
        batches = [prepared[i:i + size] for i in range(0, len(prepared), size)]
        subject = hp["merged_subject"] if ctx.merge > 1 else hp["subject"]
        ctx.log.info("%s: %d forget items -> %d requests (merge %d), %d update(s) of %d request(s); "
                     "layers %s, subject %s, %d context(s) per request; e.g. key token %r of %r",
                     self.name, len(ctx.forget), len(requests), ctx.merge, len(batches), size,
                     hp["layers"], subject, len(prefixes),
                     ctx.tokenizer.decode([prepared[0].contexts[0].input_ids[prepared[0].contexts[0].lookup]]),
                     requests[0].question)

        grad_flags = {name: p.requires_grad for name, p in ctx.model.named_parameters()}
        was_training = ctx.model.training
        ctx.model.eval().requires_grad_(False)
        edits, times = [], []
        try:
            for i, batch in enumerate(batches, start=1):
                started = time.perf_counter()
                info = self.edit_batch(run, batch)
                for p in batch:
                    info.setdefault("nll_after_edit", []).append(
                        round(target_nll(ctx.model, ctx.tokenizer, p.contexts[0], p.target_ids), 4))
                seconds = time.perf_counter() - started
                times.append(seconds)
                info = {"items": [x for p in batch for x in p.request.item_ids], **info,
                        "seconds": round(seconds, 2)}
                edits.append(info)
                ctx.log.info("%s: update %d/%d %s", self.name, i, len(batches), _brief(info))
        finally:
            ctx.model.train(was_training)
            for name, param in ctx.model.named_parameters():
                param.requires_grad_(grad_flags[name])
        changed = [f"{run.rewrite_tmp.format(l)}.weight" for l in sorted(hp["layers"])]
        patch = Patch.from_changes(self.name, ctx.spec.name, ctx.model, changed)
        patch.info.update({
            "requests": len(requests), "merge": ctx.merge, "updates": len(batches),
            "contexts_per_request": len(prefixes), "seconds_per_update_median": round(statistics.median(times), 2),
            "edits": edits,
        })
        return patch


def _brief(info: dict) -> str:
    parts = []
    for key, value in info.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, list) and value and all(isinstance(v, float) for v in value):
            parts.append(f"{key} [{', '.join(f'{v:.3g}' for v in value)}]")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def spread_residuals(run: EditRun, batch: list[Prepared], solve) -> dict:
    """MEMIT's update (Meng et al. 2023), shared with AlphaEdit: optimise the target
    hidden state z_i after the last edited layer L, then for each edited layer l in ascending
    order spread the remaining residual (z_i - h_i^L) / (L - l + 1) onto that layer's
    down-projection with ``solve(layer, R, K) -> Delta``."""
    from .keys import read_at, request_keys
    from .values import optimize_value

    hp = run.hp
    layers = sorted(hp["layers"])
    last = layers[-1]
    block = run.block(last)
    results = [optimize_value(run.model, run.tokenizer, block, p.contexts, p.target_ids, p.kl, hp,
                              start_layer=last, log=run.log)
               for p in batch]
    z = torch.stack([r.target for r in results], dim=1)  # (d, n)
    norms = []
    for i, layer in enumerate(layers):
        bare = [p.contexts[0] for p in batch]
        h = read_at(run.model, run.tokenizer, block, bare, "output").T  # current h^L, (d, n)
        keys = request_keys(run.model, run.tokenizer, run.down_proj(layer), [p.contexts for p in batch])
        # the paper divides by L - l + 1; with the edited layers counted instead, a non-contiguous
        # list (e.g. [3, 8]) still shares the residual evenly (same for contiguous layers)
        residuals = (z - h) / (len(layers) - i)
        delta = solve(layer, residuals, keys)
        run.add_to_weight(layer, delta)
        norms.append(float(delta.norm()))
    return {"nll_value": [round(r.nll_before, 3) for r in results],
            "nll_value_after": [round(r.nll_after, 3) for r in results],
            "delta_norm": [round(n, 4) for n in norms]}
