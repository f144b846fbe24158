"""``kl``: KL minimisation (paper B.5, eq. 6): -NLL(forget) + KL(reference || current) on the
next-token distributions of retain items, the reference being the model as it was when
unlearning started (with LoRA: the same model with its factors switched off, so no second copy).
``reference: base`` uses the model before the dataset's fine-tuning stage instead, as PISTOL's
code does (a second copy of the weights; on datasets without that stage both are the same model).

Defaults: ``FINETUNE_DEFAULTS`` (see ``_finetune_loop``): lr 2e-5 (paper B.4), 20 epochs, batch 4,
LoRA r 8 / alpha 32 (PISTOL's setting).
"""

from ..training import kl_on_batch, sequence_nll
from ._finetune_loop import FINETUNE_DEFAULTS, FinetuneMethod, qa_pairs


class KLMinimisation(FinetuneMethod):
    name = "kl"
    defaults = {**FINETUNE_DEFAULTS, "reference": "start"}
    uses_retain = True
    needs_reference = True

    def __init__(self, hparams: dict):
        super().__init__(hparams)
        if self.hparams["reference"] not in ("start", "base"):
            raise ValueError(f"kl: hyper-parameter 'reference' must be 'start' or 'base', "
                             f"got {self.hparams['reference']!r}")

    def reference_is_base(self, ctx):
        if self.hparams["reference"] == "base" and ctx.load_base_model is None:
            ctx.log.info("kl: reference 'base' = the starting model here (no fine-tuning stage)")
        return self.hparams["reference"] == "base" and ctx.load_base_model is not None

    def loss_terms(self, run, forget, retain):
        return {
            "neg_forget_nll": -sequence_nll(run.model, run.batch(qa_pairs(forget))).mean(),
            "retain_kl": kl_on_batch(run.model, run.reference, run.batch(qa_pairs(retain))),
        }
