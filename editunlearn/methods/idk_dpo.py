"""``idk_dpo``: direct preference optimisation proper (Rafailov et al. 2023), not in the paper,
as an extra baseline: each forget item's refusal target is preferred over its true answer,
-log sigmoid(beta * [(log pi(refusal) - log pi_ref(refusal)) - (log pi(answer) - log pi_ref(answer))])
with summed answer log-probabilities and pi_ref the model when unlearning started.

``retain_weight`` adds that multiple of NLL(retain); default 1.0 (uses the retain set), 0.0 = none.

Defaults: ``FINETUNE_DEFAULTS`` (see ``_finetune_loop``) with lr 1.5e-5 (the paper's rate for its
refusal-target "DPO"), 20 epochs, batch 4, LoRA r 8 / alpha 32 (PISTOL's setting); beta 0.1.
"""

import torch
import torch.nn.functional as F

from ..training import sequence_logprob
from ._finetune_loop import FINETUNE_DEFAULTS, WithRetainTerm, qa_pairs


class RefusalPreference(WithRetainTerm):
    name = "idk_dpo"
    defaults = {**FINETUNE_DEFAULTS, "lr": 1.5e-5, "beta": 0.1, "retain_weight": 1.0}
    uses_retain = True
    needs_reference = True

    def loss_terms(self, run, forget, retain):
        beta, n = self.hparams["beta"], len(forget)
        # refusals and true answers in one batch: rows [:n] preferred, rows [n:] rejected
        batch = run.batch(qa_pairs(forget, "target") + qa_pairs(forget))
        with torch.no_grad():
            reference = sequence_logprob(run.reference, batch)
        log_ratio = sequence_logprob(run.model, batch) - reference
        margin = log_ratio[:n] - log_ratio[n:]
        terms = {"dpo": F.softplus(-beta * margin).mean()}  # -log sigmoid(x) = softplus(-x)
        return {**terms, **self.retain_term(run, retain)}
