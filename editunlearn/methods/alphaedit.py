"""``alphaedit``: AlphaEdit (Fang et al. 2025) as an unlearner -- MEMIT's update projected onto
the null space of the preserved keys, with the keys of earlier edits accumulated so sequential
edits do not undo each other.

Per edited layer the projection P (eigenvectors of the key statistics C with eigenvalue below
``nullspace_threshold``) is computed once per job; after each update the edited keys' K K^T is
added to the accumulated K_p K_p^T. The update is R K^T P (K_p K_p^T P + K K^T P + L2 I)^-1
(editing/updates.py ``nullspace_update``), whose effect on keys outside the null space is zero.

Hyper-parameters (EasyEdit's names): editing/editor.py ``COMMON_DEFAULTS`` plus
``nullspace_threshold``, ``L2`` and ``batch_size``.
"""

import torch

from ..editing.editor import COMMON_DEFAULTS, EditRun, LocateEditMethod, Prepared, spread_residuals
from ..editing.updates import nullspace_projection, nullspace_update


class AlphaEdit(LocateEditMethod):
    name = "alphaedit"
    batched = True
    defaults = {**COMMON_DEFAULTS, "layers": [4, 5, 6, 7, 8], "clamp_norm_factor": 0.75,
                "v_weight_decay": 0.5, "nullspace_threshold": 2e-2, "L2": 10.0, "batch_size": 1}

    def check_hparams(self) -> None:
        super().check_hparams()
        for key in ("nullspace_threshold", "L2"):
            value = self.hparams[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                self._fail(key, "a positive number")

    def projection(self, run: EditRun, layer: int):
        cache = run.state.setdefault("projection", {})
        if layer not in cache:
            cov = run.stats.layer(layer).to(run.weight(layer).device)
            p, rank = nullspace_projection(cov, self.hparams["nullspace_threshold"])
            if rank == 0:
                raise ValueError(
                    f"alphaedit: no eigenvalue of layer {layer}'s key statistics is below "
                    f"nullspace_threshold {self.hparams['nullspace_threshold']} (smallest: "
                    f"{float(torch.linalg.eigvalsh(cov.double())[0]):.3g}), so the null space is empty and no "
                    f"update is possible; raise nullspace_threshold")
            run.log.info("alphaedit: layer %d null space has dimension %d of %d", layer, rank,
                         cov.shape[0])
            cache[layer] = p
        return cache[layer]

    def edit_batch(self, run: EditRun, batch: list[Prepared]) -> dict:
        previous = run.state.setdefault("previous_keys", {})

        def solve(layer, residuals, keys):
            delta = nullspace_update(residuals, keys, self.projection(run, layer),
                                     previous.get(layer), self.hparams["L2"])
            kk = keys.double() @ keys.double().T
            previous[layer] = kk if layer not in previous else previous[layer] + kk
            return delta

        return spread_residuals(run, batch, solve)
