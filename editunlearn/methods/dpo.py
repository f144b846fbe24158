"""``dpo``: what the paper calls "Direct Preference Optimization" (B.5, eq. 7), which is TOFU's
"IDK" fine-tuning, not DPO proper: NLL(retain) + NLL(forget question answered with its refusal
target). Real DPO is ``idk_dpo``.

Defaults: ``FINETUNE_DEFAULTS`` (see ``_finetune_loop``) with lr 1.5e-5 (paper B.4 for DPO),
20 epochs, batch 4, LoRA r 8 / alpha 32 (PISTOL's setting).
"""

from ..training import sequence_nll
from ._finetune_loop import FINETUNE_DEFAULTS, FinetuneMethod, qa_pairs


class RefusalTuning(FinetuneMethod):
    name = "dpo"
    defaults = {**FINETUNE_DEFAULTS, "lr": 1.5e-5}
    uses_retain = True

    def loss_terms(self, run, forget, retain):
        return {
            "retain_nll": sequence_nll(run.model, run.batch(qa_pairs(retain))).mean(),
            "refusal_nll": sequence_nll(run.model, run.batch(qa_pairs(forget, "target"))).mean(),
        }
