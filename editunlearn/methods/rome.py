"""``rome``: ROME (Meng et al. 2022) as an unlearner -- each forget question's answer is edited
into its refusal target, one request at a time, cumulatively (paper §4 sequential editing).

Per request: the key k* (down-projection input at the key token, averaged over the contexts), a
value v* optimised so the model emits the refusal (editing/values.py), and the rank-one update of
that layer's down-projection with (W + Delta) k* = v* (editing/updates.py). With
``mom2_adjustment`` the update direction is C^-1 k* (C: key statistics, a pipeline artifact).

Hyper-parameters (EasyEdit's names): editing/editor.py ``COMMON_DEFAULTS`` plus
``mom2_adjustment`` (false, as EasyEdit's Llama settings). ``layers`` must name one layer.
"""

from ..editing.editor import COMMON_DEFAULTS, EditRun, LocateEditMethod, Prepared
from ..editing.keys import request_keys
from ..editing.updates import rank_one_update
from ..editing.values import optimize_value


class ROME(LocateEditMethod):
    name = "rome"
    single_layer = True
    defaults = {**COMMON_DEFAULTS, "layers": [5], "mom2_adjustment": False}

    def check_hparams(self) -> None:
        super().check_hparams()
        if not isinstance(self.hparams["mom2_adjustment"], bool):
            self._fail("mom2_adjustment", "true or false")

    @classmethod
    def needs_key_stats(cls, hparams: dict) -> bool:
        return bool(hparams["mom2_adjustment"])

    def edit_batch(self, run: EditRun, batch: list[Prepared]) -> dict:
        (p,) = batch
        (layer,) = run.hp["layers"]
        down = run.down_proj(layer)
        value = optimize_value(run.model, run.tokenizer, down, p.contexts, p.target_ids, p.kl,
                               run.hp, start_layer=layer, log=run.log)
        key = request_keys(run.model, run.tokenizer, down, [p.contexts])[:, 0]
        cov = run.stats.layer(layer) if run.hp["mom2_adjustment"] else None
        delta = rank_one_update(down.weight, key, value.target, cov)
        run.add_to_weight(layer, delta)
        return {"nll_value": round(value.nll_before, 3), "nll_value_after": round(value.nll_after, 3),
                "steps": value.steps, "delta_norm": round(float(delta.norm()), 4)}
