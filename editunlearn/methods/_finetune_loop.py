"""The training loop shared by the gradient-based unlearning baselines (ga, gd, kl, dpo, npo,
idk_dpo). A method subclasses ``FinetuneMethod`` and defines only ``loss_terms``.

Data order follows TOFU and PISTOL: one epoch is one pass over the forget set in a seeded random
order, and each forget item is paired with one seeded random retain item (paper B.5: "we randomly
sample an example from S_R every time we see an example from S_F"). Optimiser: AdamW with linear
warmup then linear decay, gradient accumulation and clipping.

Hyper-parameters shared by every baseline (``FINETUNE_DEFAULTS``):
  epochs 20, batch_size 4, LoRA r 8 / alpha 32 -- PISTOL's unlearning setting; the paper runs
    its baselines with PISTOL's hyper-parameters (B.4);
  lr 2e-5 -- paper B.4 for GA, GD and KL (methods override it where the paper differs);
  gradient_accumulation_steps 1, weight_decay 0.01, warmup_ratio 0.05 (one of the 20 epochs),
    max_grad_norm 1.0 (0 or null: no clipping) -- not stated in the paper; common fine-tuning
    values;
  lora: {r, alpha, target_modules} trains LoRA factors (patch = the factors, a few MB); null = full
    fine-tuning of the parameters whose names contain one of ``trainable`` (null = all of them;
    the patch then holds every trained tensor);
  bf16_autocast: run forward and backward under bfloat16 autocast (weights and optimiser stay
    float32) -- ~1.4x faster on CPUs with bf16 support, measured on the embedded model;
  the seed is the setting's seed (``ctx.seed``), not a hyper-parameter.
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod

import torch

from ..lora import (DEFAULT_TARGET_MODULES, attach_lora, detach_lora, lora_disabled, lora_modules,
                    lora_parameters, lowrank_adapter, merged_weight)
from ..patch import Patch
from ..training import QABatch, check_finite, collate_qa, sequence_nll
from . import Method, UnlearnContext

FINETUNE_DEFAULTS = {
    "epochs": 20,
    "batch_size": 4,
    "gradient_accumulation_steps": 1,
    "lr": 2e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.05,
    "max_grad_norm": 1.0,
    "lora": {"r": 8, "alpha": 32, "target_modules": list(DEFAULT_TARGET_MODULES)},
    "trainable": None,
    "bf16_autocast": False,
}

LOG_LINES_PER_RUN = 20


class FinetuneMethod(Method):
    """An unlearning method that trains the model on a loss over forget (and retain) batches."""

    defaults = FINETUNE_DEFAULTS
    needs_reference = False  # True: ``run.reference`` is the frozen model as it was at the start

    def reference_is_base(self, ctx: UnlearnContext) -> bool:
        """True when the reference must be the model before the fine-tuning stage rather than
        the starting model (KL's ``reference: base``)."""
        return False
    items_label = "forget"  # what ctx.forget holds, for the log

    def __init__(self, hparams: dict):
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameter(s) {unknown} "
                             f"(known: {', '.join(sorted(self.defaults))})")
        super().__init__({**copy.deepcopy(self.defaults), **hparams})

    @abstractmethod
    def loss_terms(self, run: "TrainingRun", forget: list[dict],
                   retain: list[dict]) -> dict[str, torch.Tensor]:
        """Named scalar terms whose sum is minimised; ``retain`` pairs one item with each forget item."""

    def unlearn(self, ctx: UnlearnContext) -> Patch:
        return train(self, ctx)


class WithRetainTerm(FinetuneMethod):
    """A forget-set loss plus ``retain_weight`` x NLL(retain); weight 0 = no retain set used."""

    def __init__(self, hparams: dict):
        super().__init__(hparams)
        self.uses_retain = self.hparams["retain_weight"] > 0

    def retain_term(self, run: "TrainingRun", retain: list[dict]) -> dict[str, torch.Tensor]:
        if not self.uses_retain:
            return {}
        nll = sequence_nll(run.model, run.batch(qa_pairs(retain))).mean()
        return {"retain_nll": self.hparams["retain_weight"] * nll}


class TrainingRun:
    """What a loss needs at each step: the model being trained, batching, the frozen reference."""

    def __init__(self, ctx: UnlearnContext, device: torch.device, reference=None):
        self.model = ctx.model
        self.formatter = ctx.formatter
        self.device = device
        self.reference = reference

    def batch(self, pairs: list[tuple[str, str]]) -> QABatch:
        return collate_qa(self.formatter, pairs).to(self.device)


class _LoRAOffReference:
    """The starting model without a second copy: LoRA never changes the base weights."""

    def __init__(self, model):
        self.model = model

    def __call__(self, **inputs):
        with torch.no_grad(), lora_disabled(self.model):
            return self.model(**inputs)


def qa_pairs(items: list[dict], answer_key: str = "answer") -> list[tuple[str, str]]:
    return [(item["question"], item[answer_key]) for item in items]


def lora_settings(hparams: dict) -> dict | None:
    """The ``lora`` block completed with the default rank, alpha and modules it leaves out."""
    lora = hparams["lora"]
    if lora is None:
        return None
    unknown = sorted(set(lora) - set(FINETUNE_DEFAULTS["lora"]))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in hyper-parameter 'lora' "
                         f"(known: {', '.join(FINETUNE_DEFAULTS['lora'])})")
    if hparams["trainable"] is not None:
        raise ValueError("hyper-parameter 'trainable' selects parameters for full fine-tuning; "
                         "set lora: null to use it (LoRA trains only its own factors)")
    return {**FINETUNE_DEFAULTS["lora"], **lora}


def select_trainable(model, trainable: list[str] | None) -> list[str]:
    """Freeze all parameters but those named by ``trainable`` (substrings; None = all)."""
    if trainable is not None and (not isinstance(trainable, list)
                                  or not all(isinstance(s, str) for s in trainable)):
        raise ValueError(f"hyper-parameter 'trainable' must be null or a list of name substrings, "
                         f"got {trainable!r}")
    names = []
    for name, param in model.named_parameters():
        chosen = trainable is None or any(s in name for s in trainable)
        param.requires_grad_(chosen)
        if chosen:
            names.append(name)
    if not names:
        raise ValueError(f"hyper-parameter 'trainable' {trainable} matches no parameter name")
    return names


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """LR factor of optimiser step s (0-based): rises to 1 over the warmup, then falls linearly.
    Never 0, so no step is wasted."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return (total_steps - step) / (total_steps - warmup_steps)

    return factor


def _step_batches(n_forget: int, n_retain: int, batch_size: int, accumulation: int, epochs: int,
                  seed: int):
    """Yield (epoch, micro-batches) per optimiser step; a micro-batch is (forget indices, indices
    of their retain partners), the partners empty when there is no retain set."""
    # separate streams, so GA (no retain) and GD see the same forget order for the same seed
    forget_order = torch.Generator().manual_seed(seed)
    retain_draws = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n_forget, generator=forget_order).tolist()
        partners = torch.randint(n_retain, (n_forget,), generator=retain_draws).tolist() if n_retain else []
        batches = [(order[i:i + batch_size], partners[i:i + batch_size])
                   for i in range(0, n_forget, batch_size)]
        for start in range(0, len(batches), accumulation):
            yield epoch, batches[start:start + accumulation]


def _format_terms(terms: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in terms.items())


def train(method: FinetuneMethod, ctx: UnlearnContext, epoch_end=None) -> Patch:
    """Run the loop; ``epoch_end(epoch)``, if given, is called after each epoch's last step with
    the model in eval mode, and returning True stops training early (e.g. a quality gate reached)."""
    hp = method.hparams
    forget, retain = ctx.forget, ctx.retain
    if not forget:
        raise ValueError(f"{method.name}: no forget items to unlearn")
    if method.uses_retain and not retain:
        raise ValueError(f"{method.name}: this method trains on the retain set, which is empty")
    lora = lora_settings(hp)
    model = ctx.model
    device = next(model.parameters()).device
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training

    batch_size, accumulation, epochs = hp["batch_size"], hp["gradient_accumulation_steps"], hp["epochs"]
    if min(batch_size, accumulation, epochs) < 1:
        raise ValueError(f"{method.name}: batch_size, gradient_accumulation_steps and epochs must "
                         f"be at least 1, got {batch_size}, {accumulation}, {epochs}")
    batches_per_epoch = math.ceil(len(forget) / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(hp["warmup_ratio"] * total_steps)
    max_grad_norm = hp["max_grad_norm"] or math.inf  # inf: measure the norm, clip nothing
    log_every = max(1, total_steps // LOG_LINES_PER_RUN)

    try:
        base_reference = None
        if method.needs_reference and method.reference_is_base(ctx):
            base_reference = ctx.load_base_model().eval().requires_grad_(False)
            ctx.log.info("%s: reference = the model before fine-tuning", method.name)
        if lora:
            wrapped = attach_lora(model, lora["r"], lora["alpha"], lora["target_modules"],
                                  generator=torch.Generator().manual_seed(ctx.seed))
            params = lora_parameters(model)
            reference = base_reference or (_LoRAOffReference(model) if method.needs_reference else None)
            what = (f"LoRA r={lora['r']} alpha={lora['alpha']} on {len(wrapped)} modules "
                    f"({', '.join(lora['target_modules'])})")
        else:
            # copy before any parameter is frozen or trained
            reference = base_reference or (copy.deepcopy(model).eval().requires_grad_(False)
                                           if method.needs_reference else None)
            trained_names = select_trainable(model, hp["trainable"])
            params = [p for p in model.parameters() if p.requires_grad]
            what = f"full fine-tuning of {len(trained_names)} tensors"
        n_trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      linear_warmup_decay(warmup_steps, total_steps))
        ctx.log.info("%s: %s, %d trainable parameters; optimiser AdamW(lr=%g, weight_decay=%g), "
                     "linear schedule with %d warmup steps, max_grad_norm %g, bf16 autocast %s", method.name,
                     what, n_trainable, hp["lr"], hp["weight_decay"], warmup_steps,
                     hp["max_grad_norm"], bool(hp["bf16_autocast"]))
        ctx.log.info("%s: %d %s / %d retain items, %d epochs, batch size %d, gradient "
                     "accumulation %d (effective batch %d), %d optimiser steps (%d per epoch)",
                     method.name, len(forget), method.items_label, len(retain), epochs, batch_size,
                     accumulation, batch_size * accumulation, total_steps, steps_per_epoch)

        run = TrainingRun(ctx, device, reference)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(hp["bf16_autocast"]))
        model.train()
        first_terms, terms, steps_done = None, {}, 0
        steps = _step_batches(len(forget), len(retain), batch_size, accumulation, epochs, ctx.seed)
        for step, (epoch, group) in enumerate(steps, start=1):
            optimizer.zero_grad(set_to_none=True)
            terms = {}
            for forget_idx, retain_idx in group:
                with autocast:
                    parts = method.loss_terms(run, [forget[i] for i in forget_idx],
                                              [retain[i] for i in retain_idx])
                loss = sum(parts.values())
                check_finite(loss, step)
                (loss / len(group)).backward()
                for name, value in {"loss": loss, **parts}.items():
                    terms[name] = terms.get(name, 0.0) + float(value.detach()) / len(group)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            check_finite(grad_norm, step, "gradient norm")
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            first_terms = first_terms or terms
            steps_done = step
            if step == 1 or step % log_every == 0 or step == total_steps:
                ctx.log.info("%s: step %d/%d (epoch %d) %s, grad norm %.3f, lr %.3g", method.name,
                             step, total_steps, epoch, _format_terms(terms), float(grad_norm), lr)
            if epoch_end is not None and step % steps_per_epoch == 0:
                model.eval()
                stop = epoch_end(epoch)
                model.train()
                if stop:
                    ctx.log.info("%s: stopping after epoch %d of %d", method.name, epoch, epochs)
                    break
        # no loss follows the last update, and finite LoRA factors can still overflow when
        # merged: checked on copies first, so that with LoRA a failure leaves the model as it was
        if lora:
            for name, module in lora_modules(model).items():
                check_finite(merged_weight(module).abs().max(), steps_done, f"weight {name}.weight")
            adapter = lowrank_adapter(model)
            detach_lora(model, merge=True)
        else:
            weights = dict(model.named_parameters())
            for name in trained_names:
                check_finite(weights[name].detach().abs().max(), steps_done, f"weight {name}")
    finally:
        model.train(was_training)
        detach_lora(model, merge=False)  # drops unmerged factors: a failed LoRA run changes nothing
        for name, param in model.named_parameters():
            param.requires_grad_(grad_flags[name])

    patch = (Patch(method.name, ctx.spec.name, adapters=[adapter]) if lora
             else Patch.from_changes(method.name, ctx.spec.name, model, trained_names))
    patch.info.update({
        "mode": "lora" if lora else "full", "steps": steps_done, "epochs": epochs,
        "trainable_parameters": n_trainable, "first_loss": first_terms, "final_loss": terms,
    })
    return patch
