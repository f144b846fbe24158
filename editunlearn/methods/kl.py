"""``kl``: KL minimisation (paper B.5, eq. 6): -NLL(forget) + KL(reference || current) on the
next-token distributions of retain items, the reference being the model as it was when
unlearning started (with LoRA: the same model with its factors switched off, so no second copy).

Defaults: ``FINETUNE_DEFAULTS`` (see ``_finetune_loop``): lr 2e-5 (paper B.4), 20 epochs, batch 4,
LoRA r 8 / alpha 32 (PISTOL's setting).
"""

from ..training import kl_on_batch, sequence_nll
from ._finetune_loop import FINETUNE_DEFAULTS, FinetuneMethod, qa_pairs


class KLMinimisation(FinetuneMethod):
    name = "kl"
    defaults = dict(FINETUNE_DEFAULTS)
    uses_retain = True
    needs_reference = True

    def loss_terms(self, run, forget, retain):
        return {
            "neg_forget_nll": -sequence_nll(run.model, run.batch(qa_pairs(forget))).mean(),
            "retain_kl": kl_on_batch(run.model, run.reference, run.batch(qa_pairs(retain))),
        }
