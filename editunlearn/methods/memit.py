"""``memit``: MEMIT (Meng et al. 2023) as an unlearner -- forget questions edited into their
refusal targets, ``batch_size`` requests per update (1 = sequential, the paper's setting),
cumulatively.

Per update: target hidden states z after the last edited layer, then for each edited layer the
remaining residual spread over the layers left and solved against lambda*C + K K^T
(editing/updates.py ``least_squares_update``; C = key statistics, a pipeline artifact;
lambda = ``mom2_update_weight``).

Hyper-parameters (EasyEdit's names): editing/editor.py ``COMMON_DEFAULTS`` plus
``mom2_update_weight`` and ``batch_size``.
"""

from ..editing.editor import COMMON_DEFAULTS, EditRun, LocateEditMethod, Prepared, spread_residuals
from ..editing.updates import least_squares_update


class MEMIT(LocateEditMethod):
    name = "memit"
    batched = True
    defaults = {**COMMON_DEFAULTS, "layers": [4, 5, 6, 7, 8], "clamp_norm_factor": 0.75,
                "v_weight_decay": 0.5, "mom2_update_weight": 15000.0, "batch_size": 1}

    def check_hparams(self) -> None:
        super().check_hparams()
        w = self.hparams["mom2_update_weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            self._fail("mom2_update_weight", "a number >= 0")

    def edit_batch(self, run: EditRun, batch: list[Prepared]) -> dict:
        weight = run.hp["mom2_update_weight"]
        return spread_residuals(run, batch, lambda layer, r, k: least_squares_update(
            r, k, run.stats.layer(layer).to(k.device), weight))
