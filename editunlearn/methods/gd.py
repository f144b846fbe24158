"""``gd``: gradient difference (Liu et al. 2022; paper B.5, eq. 5): -NLL(forget) + NLL(retain),
one seeded random retain item per forget item.

Defaults: ``FINETUNE_DEFAULTS`` (see ``_finetune_loop``): lr 2e-5 (paper B.4), 20 epochs, batch 4,
LoRA r 8 / alpha 32 (PISTOL's setting).
"""

from ..training import sequence_nll
from ._finetune_loop import FINETUNE_DEFAULTS, FinetuneMethod, qa_pairs


class GradientDifference(FinetuneMethod):
    name = "gd"
    defaults = dict(FINETUNE_DEFAULTS)
    uses_retain = True

    def loss_terms(self, run, forget, retain):
        return {
            "neg_forget_nll": -sequence_nll(run.model, run.batch(qa_pairs(forget))).mean(),
            "retain_nll": sequence_nll(run.model, run.batch(qa_pairs(retain))).mean(),
        }
