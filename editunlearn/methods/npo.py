"""``npo``: negative preference optimisation (Zhang et al. 2024), not in the paper, as an extra
baseline: (2 / beta) * log(1 + (pi / pi_ref)^beta) on each forget answer, pi being the summed
answer log-probability and pi_ref that of the model when unlearning started. Unlike GA its
gradient fades as the answer's probability falls, so it diverges far more slowly.

``retain_weight`` adds that multiple of NLL(retain) (the "NPO+RT" variant of Zhang et al.);
the default 1.0 makes this NPO+RT and uses the retain set; 0.0 gives plain NPO without it.

Defaults: ``FINETUNE_DEFAULTS`` (see ``_finetune_loop``): lr 2e-5 (the paper's rate for the
gradient-ascent family), 20 epochs, batch 4, LoRA r 8 / alpha 32 (PISTOL's setting); beta 0.1
(Zhang et al.).
"""

import torch
import torch.nn.functional as F

from ..training import sequence_logprob
from ._finetune_loop import FINETUNE_DEFAULTS, WithRetainTerm, qa_pairs


class NegativePreferenceOptimisation(WithRetainTerm):
    name = "npo"
    defaults = {**FINETUNE_DEFAULTS, "beta": 0.1, "retain_weight": 1.0}
    uses_retain = True
    needs_reference = True

    def loss_terms(self, run, forget, retain):
        beta = self.hparams["beta"]
        batch = run.batch(qa_pairs(forget))
        with torch.no_grad():
            reference = sequence_logprob(run.reference, batch)
        log_ratio = sequence_logprob(run.model, batch) - reference
        # log(1 + exp(x)) = softplus(x), stable for large log-ratios
        terms = {"npo": (2 / beta) * F.softplus(beta * log_ratio).mean()}
        return {**terms, **self.retain_term(run, retain)}
