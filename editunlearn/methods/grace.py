"""``grace``: GRACE (Hartvigsen et al. 2023, "Aging with GRACE: Lifelong Model Editing with
Discrete Key-Value Adaptors") with refusal answers as edit targets.

A codebook of (key, value, deferral radius, label) entries sits on one layer's MLP
down-projection. Key = the projection's input at the last prompt token of an edited question;
value = a vector that replaces the projection's output; label = the edit's target text. A position
whose input lies within the radius of its nearest key gets that key's value; every other input
passes through the layer untouched, so the model's weights never change.

Editing one request (question, refusal target), in order:
  1. query h = the projection's input at the question's last prompt token;
  2. codebook maintenance against the nearest key (distance d, radius e, label y'):
       empty codebook or d > e + eps       -> add (h, value, eps, target)
       overlap and y' == target (expand)   -> e = max(e, d + eps): the entry now covers the whole
                                              ball a new key at h would have covered
       overlap and y' != target (split)    -> e = min(e, d/2); add (h, value, min(eps, d - e), target)
                                              so the two balls no longer overlap;
  3. the value of the entry that now covers h is trained (``n_iter`` steps of ``val_train`` at
     ``edit_lr``) so that the model, with the codebook in place, generates the target followed by
     the end-of-turn token; an expanded entry is trained on all questions it covers. With
     ``reg: early_stop`` training stops once greedy decoding reproduces the target exactly.

``replacement``: ``replace_last`` (the paper's setting for generation) replaces the output only
at positions that hit a key -- in practice the last prompt token, whose value then steers the
answer through attention; ``replace_all`` replaces it at the first hit and at every later
position of that sequence, including the generated tokens. Both rules look only at tokens up to
the current position, so training, teacher-forced scoring and cached token-by-token generation
agree (see ``_lifelong``).

Hyper-parameters (EasyEdit names): inner_params (one down-projection; null = layer 27/32 of the
depth), edit_lr, n_iter, eps (initial radius), dist_fn (euc | cos), val_init (warm = the layer's
own output at the key, cold = small random), val_train (sgd | adam), reg (early_stop | none),
replacement, eps_expand (coverage). Uses no retain data.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..patch import Adapter, Patch, register_adapter
from . import Method, UnlearnContext
from ._lifelong import (DownProjAdaptor, EditBatch, adaptor_of, capture_input, check_hparams,
                        check_single_questions, frozen, positive, resolve_inner_module, sequence_tracker)

ADAPTER_KIND = "grace_codebook"
CHOICES = {"dist_fn": ("euc", "cos"), "val_init": ("warm", "cold"), "val_train": ("sgd", "adam"),
           "reg": ("early_stop", "none"), "replacement": ("replace_last", "replace_all"),
           "eps_expand": ("coverage",)}


class GraceCodebook(DownProjAdaptor):
    def __init__(self, tracker, d_in: int, d_out: int, dist_fn: str = "euc",
                 replacement: str = "replace_last", device=None):
        super().__init__(tracker)
        self.dist_fn = dist_fn
        self.replacement = replacement
        self.register_buffer("keys", torch.zeros(0, d_in, device=device))
        self.register_buffer("eps", torch.zeros(0, device=device))
        self.values = torch.nn.Parameter(torch.zeros(0, d_out, device=device), requires_grad=False)
        self.labels: list[str] = []  # edit-time bookkeeping only; not needed to look up

    def __len__(self) -> int:
        return self.keys.shape[0]

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., K) distances to every key, in float32."""
        flat = x.reshape(-1, x.shape[-1]).float()
        if self.dist_fn == "euc":
            # the matrix-product shortcut loses ~1e-3 on large activations; radii are ~1
            d = torch.cdist(flat, self.keys, compute_mode="donot_use_mm_for_euclid_dist")
        else:
            d = 1 - F.normalize(flat, dim=-1) @ F.normalize(self.keys, dim=-1).T
        return d.reshape(*x.shape[:-1], -1)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest key index, its distance, and whether x lies within its radius."""
        d = self.distances(x)
        dmin, idx = d.min(-1)
        return idx, dmin, dmin <= self.eps[idx]

    def route(self, x, out, real=None):
        if len(self) == 0:
            return out
        batch, length = x.shape[:2]
        idx, _, hit = self.lookup(x)
        explicit = real is not None
        hit = hit & (real if explicit else self.tracker.real(batch, length, x.device))
        if self.replacement == "replace_last":
            active, chosen = hit, idx
        else:
            # sticky: the first hit of a row chooses the key for it and every later position
            state = self.carried(batch, lambda: torch.full((batch,), -1, dtype=torch.long,
                                                           device=x.device), explicit)
            first = hit.float().argmax(1)
            first_key = torch.where(hit.any(1), idx.gather(1, first[:, None]).squeeze(1), -1)
            row_key = torch.where(state >= 0, state, first_key)
            positions = torch.arange(length, device=x.device)[None]
            active = (state >= 0)[:, None] | ((first_key >= 0)[:, None] & (positions >= first[:, None]))
            chosen = row_key.clamp(min=0)[:, None].expand(batch, length)
            if not explicit:
                self._carry = row_key
        return torch.where(active[..., None], self.values[chosen].to(out.dtype), out)

    def add(self, key: torch.Tensor, value: torch.Tensor, eps: float, label: str) -> int:
        self.keys = torch.cat([self.keys, key.float()[None].to(self.keys.device)])
        self.eps = torch.cat([self.eps, torch.tensor([eps], device=self.eps.device)])
        values = torch.cat([self.values.detach(), value.float()[None].to(self.values.device)])
        self.values = torch.nn.Parameter(values, requires_grad=False)
        self.labels.append(label)
        return len(self) - 1


@register_adapter(ADAPTER_KIND)
def _install(model, config: dict, state: dict[str, torch.Tensor]) -> None:
    """``config = {module, dist_fn, replacement}``, state ``keys`` (K x d_in), ``values``
    (K x d_out), ``eps`` (K)."""
    module = model.get_submodule(config["module"])
    keys, values = state["keys"], state["values"]
    if keys.shape[1] != module.in_features or values.shape[1] != module.out_features:
        raise ValueError(f"grace codebook for {config['module']!r} has keys of width {keys.shape[1]} "
                         f"and values of width {values.shape[1]}; the model's layer maps "
                         f"{module.in_features} -> {module.out_features}")
    device = module.weight.device
    book = GraceCodebook(sequence_tracker(model), module.in_features, module.out_features,
                         config["dist_fn"], config["replacement"], device)
    book.keys = keys.float().to(device)
    book.eps = state["eps"].float().to(device)
    book.values = torch.nn.Parameter(values.float().to(device), requires_grad=False)
    book.labels = list(config.get("labels", [""] * len(keys)))
    book.attach(model, config["module"])


class Grace(Method):
    name = "grace"
    uses_retain = False
    defaults = {
        "inner_params": None,
        "edit_lr": 1.0,
        "n_iter": 50,
        "eps": 1.0,
        "dist_fn": "euc",
        "val_init": "warm",
        "val_train": "adam",
        "reg": "early_stop",
        "replacement": "replace_last",
        "eps_expand": "coverage",
    }

    def __init__(self, hparams: dict):
        super().__init__(check_hparams(self.name, self.defaults, hparams, CHOICES))
        positive(self.name, self.hparams, "edit_lr", "eps")
        positive(self.name, self.hparams, "n_iter", allow_zero=True)

    def unlearn(self, ctx: UnlearnContext) -> Patch:
        check_single_questions(self.name, ctx)
        editor = GraceEditor(ctx.model, ctx.spec, ctx.formatter, self.hparams, ctx.log, ctx.seed)
        with frozen(ctx.model):
            for item in ctx.forget:
                editor.edit(item["question"], item["target"])
        report = editor.report([item["question"] for item in ctx.forget])
        ctx.log.info("grace: %d edits -> %d codebook entries; %d/%d edited prompts hit their "
                     "entry; %.2f s per edit", len(ctx.forget), report["entries"],
                     report["edited_prompts_hit"], len(ctx.forget), report["seconds_per_edit"])
        patch = Patch(self.name, ctx.spec.name, adapters=[editor.adapter()])
        patch.info.update(report)
        return patch


class GraceEditor:
    """Sequential GRACE editing of one model: ``edit`` one request at a time; the model answers
    with every edit so far in place after each call."""

    def __init__(self, model, spec, formatter, hparams: dict, log, seed: int = 0):
        self.model, self.formatter, self.hp, self.log = model, formatter, hparams, log
        self.module = resolve_inner_module("grace", model, spec, hparams["inner_params"])
        self.device = next(model.parameters()).device
        self.book = adaptor_of(model, self.module)
        if self.book is None:
            linear = model.get_submodule(self.module)
            self.book = GraceCodebook(sequence_tracker(model), linear.in_features,
                                      linear.out_features, hparams["dist_fn"],
                                      hparams["replacement"], self.device).attach(model, self.module)
        elif not isinstance(self.book, GraceCodebook):
            raise RuntimeError(f"{self.module} already carries a {type(self.book).__name__}")
        self.members: list[list[str]] = [[] for _ in range(len(self.book))]  # questions per entry
        self.generator = torch.Generator().manual_seed(seed)
        self.times: list[float] = []
        self.actions = {"add": 0, "expand": 0, "split": 0}

    @torch.no_grad()
    def key_and_output(self, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's input and its unedited output at the last prompt token."""
        ids = torch.tensor([self.formatter.prompt_ids(question)], device=self.device)
        with capture_input(self.model, self.module) as seen:
            self.model.base_model(input_ids=ids)
        x = seen[0][0, -1].float()
        linear = self.model.get_submodule(self.module)
        bias = None if linear.bias is None else linear.bias.float()
        return x, F.linear(x, linear.weight.float(), bias)

    def edit(self, question: str, target: str) -> int:
        start = time.perf_counter()
        hp, book = self.hp, self.book
        key, output = self.key_and_output(question)
        eps = float(hp["eps"])
        if hp["val_init"] == "warm":
            value = output
        else:
            value = torch.randn(output.shape, generator=self.generator).to(output) * output.std()
        action, near = "add", None
        if len(book):
            dist = book.distances(key[None])[0]
            near = int(dist.argmin())
            d, radius = float(dist[near]), float(book.eps[near])
            if d <= radius + eps:
                action = "expand" if book.labels[near] == target else "split"
        if action == "expand":
            book.eps[near] = max(radius, d + eps)
            self.members[near].append(question)
            entry = near
        elif action == "split":
            shrunk = min(radius, d / 2)
            book.eps[near] = shrunk
            entry = self._add(key, value, min(eps, d - shrunk), target, question)
        else:
            entry = self._add(key, value, eps, target, question)
        self.actions[action] += 1
        steps = self._train_value(entry, target)
        self.times.append(time.perf_counter() - start)
        self.log.info("grace: edit %d: %s -> entry %d of %d (radius %.3f); %d value steps, target "
                      "NLL %.3f, greedy %s; %.1f s", len(self.times), action, entry, len(book),
                      float(book.eps[entry]), steps, self.last_nll,
                      "exact" if self.last_exact else "not exact", self.times[-1])
        return entry

    def _add(self, key, value, eps, target, question) -> int:
        self.members.append([question])
        return self.book.add(key, value, eps, target)

    def _train_value(self, entry: int, target: str) -> int:
        hp, book = self.hp, self.book
        batch = EditBatch(self.formatter, [(q, target) for q in self.members[entry]], self.model,
                          self.module)
        values = book.values
        values.requires_grad_(True)
        opt = (torch.optim.SGD if hp["val_train"] == "sgd" else torch.optim.Adam)([values], lr=hp["edit_lr"])
        rows = torch.zeros(len(book), 1, device=values.device)
        rows[entry] = 1
        self._check_hit(batch, entry)
        steps = 0
        try:
            while True:
                opt.zero_grad(set_to_none=True)
                nll, exact = batch.target_stats(book.route(batch.x, batch.base_out, batch.real))
                if steps == hp["n_iter"] or (hp["reg"] == "early_stop" and exact):
                    break
                nll.backward()
                values.grad *= rows  # only this entry learns; the others keep their edits
                opt.step()
                steps += 1
        finally:
            values.requires_grad_(False)
        self.last_nll, self.last_exact = float(nll.detach()), exact
        return steps

    @torch.no_grad()
    def _check_hit(self, batch: EditBatch, entry: int) -> None:
        x = batch.x[torch.arange(len(batch.last_prompt)), batch.last_prompt]
        idx, dmin, hit = self.book.lookup(x)
        if not bool((hit & (idx == entry)).all()):
            raise RuntimeError(f"grace: the edited prompt does not reach its codebook entry "
                               f"(nearest distance {dmin.tolist()}, radius "
                               f"{float(self.book.eps[entry]):.3g}); 'eps' is too small for this "
                               f"layer's activations")

    @torch.no_grad()
    def report(self, questions: list[str]) -> dict:
        hits = 0
        for question in questions:
            key, _ = self.key_and_output(question)
            hits += int(self.book.lookup(key[None])[2].item())
        return {"entries": len(self.book), "edits": len(self.times), **self.actions,
                "edited_prompts_hit": hits, "radii": [round(float(e), 4) for e in self.book.eps],
                "seconds_per_edit": round(sum(self.times) / max(1, len(self.times)), 3),
                "edit_seconds": [round(t, 3) for t in self.times],
                "module": self.module}

    def adapter(self) -> Adapter:
        book = self.book
        return Adapter(ADAPTER_KIND, {"module": self.module, "dist_fn": book.dist_fn,
                                      "replacement": book.replacement, "labels": book.labels},
                       {"keys": book.keys.detach().cpu().clone(), "eps": book.eps.detach().cpu().clone(),
                        "values": book.values.detach().cpu().clone()})
