"""``ga``: gradient ascent (paper B.5, eq. 4): minimise -NLL of the forget answers.

Defaults: ``FINETUNE_DEFAULTS`` (see ``_finetune_loop``): lr 2e-5 (paper B.4), 20 epochs, batch 4,
LoRA r 8 / alpha 32 (PISTOL's setting). Uses no retain data.
"""

from ..training import sequence_nll
from ._finetune_loop import FINETUNE_DEFAULTS, FinetuneMethod, qa_pairs


class GradientAscent(FinetuneMethod):
    name = "ga"
    defaults = dict(FINETUNE_DEFAULTS)
    uses_retain = False

    def loss_terms(self, run, forget, retain):
        return {"neg_forget_nll": -sequence_nll(run.model, run.batch(qa_pairs(forget))).mean()}
