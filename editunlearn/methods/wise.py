"""``wise``: WISE (Wang et al. 2024, "WISE: Rethinking the Knowledge Memory for Lifelong Model
Editing of Large Language Models") with refusal answers as edit targets.

Main memory = one layer's MLP down-projection W, left as it is. Side memory = a trained copy
W' = W + delta of it. A routing score decides per input which one answers:
    score(x) = || (W' - W) a(x) ||_2,   a(x) = the down-projection's input,
computed per token; a sequence switches to the side memory once the running maximum of its
prompt tokens' scores passes the memory's threshold, so the decision is taken on the question
and kept while the answer is generated (answer tokens do not move it: an answer word that scored
high would otherwise switch a retain answer to the side memory midway -- seen on SmolLM2, 75 of
177 factual retain answers); it depends only on tokens up to the current one -- see
``_lifelong`` for why that keeps padding and the KV cache correct.

Editing (sequential, one request at a time):
  * knowledge shards: every ``save_freq`` edits a new shard starts from the memory's consolidated
    state with its own random gradient mask (a ``mask_ratio`` fraction of W' is trainable);
  * each edit trains the shard for up to ``n_iter`` steps (SGD at ``edit_lr``) on the target NLL
    (teacher-forced, side memory applied) plus the activation-margin loss
        max(0, s_out - alpha) + max(0, beta - s_edit) + max(0, gamma - (s_edit - s_out))
    with s = max token score, s_edit on the edited prompt, s_out on ``n_loc`` out-of-scope prompts
    per step (``loc_source``: ``neutral`` = the ``loc_prompts`` list, no retain data; ``retain``
    = the retain questions); ``loc_select: hardest`` takes the ``n_loc`` out-of-scope prompts
    that score highest under the current shard (all are scored every step), ``random`` a random
    sample; ``act_margin = [alpha, beta, gamma]``; each step's change is kept
    within +-``norm_constraint`` per entry of the shard; with ``reg: early_stop`` training stops
    once greedy decoding reproduces the target and the edit's score clears beta and every
    out-of-scope prompt's score by the routing ratio;
  * merging: the shards' task vectors (shard - consolidated state) are combined with TIES
    (``densities``, ``weights``) into the memory; every ``merge_freq`` edits the memory is
    consolidated, and with ``retrieve: true`` it is closed and later edits go into a new side
    memory (WISE-Retrieve: the memory whose score is highest relative to its threshold answers);
    with ``retrieve: false`` the next shards build on the consolidated memory;
  * threshold of a memory = ``act_ratio`` x the lowest score of its edited prompts, recomputed
    after every merge, so every edited prompt routes to a side memory; with
    ``threshold_above_loc`` (default) raised above every out-of-scope prompt's score under the
    merged memory, so none of them routes to it (an edit scoring below that stays unrouted).
After every edit the installed adaptor holds all edits so far (pending shards merged into the
view), so edit k never loses edits 1..k-1; the final patch holds each memory's delta and threshold.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..patch import Adapter, Patch, register_adapter
from . import Method, UnlearnContext
from ._lifelong import (NEUTRAL_PROMPTS, DownProjAdaptor, EditBatch, adaptor_of, capture_input,
                        check_hparams, check_single_questions, frozen, positive, prompt_batch,
                        resolve_inner_module, sequence_tracker, ties_merge)

ADAPTER_KIND = "wise_side_memory"
LOC_RESCORE_EVERY = 5  # steps between scoring every out-of-scope prompt (loc_select: hardest)
CHOICES = {"optimizer": ("sgd", "adam"), "act_agg": ("mean", "max"), "merge_alg": ("ties",),
           "loc_source": ("neutral", "retain"), "loc_select": ("hardest", "random"),
           "reg": ("early_stop", "none")}


class WiseMemories(DownProjAdaptor):
    """Side memories of one down-projection: deltas (M x d_out x d_in) and thresholds (M)."""

    def __init__(self, tracker, d_in: int, d_out: int, agg: str = "mean", device=None):
        super().__init__(tracker)
        self.agg = agg
        self.register_buffer("deltas", torch.zeros(0, d_out, d_in, device=device))
        self.register_buffer("thresholds", torch.zeros(0, device=device))

    def __len__(self) -> int:
        return self.deltas.shape[0]

    def scores(self, x: torch.Tensor, deltas: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_in) -> (M, B, T) token scores ||delta_m a_t||."""
        deltas = self.deltas if deltas is None else deltas
        return torch.einsum("btd,mod->mbto", x.float(), deltas).norm(dim=-1)

    def route(self, x, out, real=None, prompt=None):
        """``real``/``prompt`` (B, T): for direct calls on whole sequences (editing); from the
        model's forward the tracker supplies them."""
        if len(self) == 0:
            return out
        batch, length = x.shape[:2]
        explicit = real is not None
        real = real if explicit else self.tracker.real(batch, length, x.device)
        if prompt is None:
            prompt = real if explicit else self.tracker.prompt(batch, length, x.device)
        side = torch.einsum("btd,mod->mbto", x.float(), self.deltas)  # (M, B, T, d_out)
        fresh = lambda: torch.zeros(3, len(self), batch, device=x.device)  # noqa: E731
        state = self.carried(batch, fresh, explicit)
        # only prompt tokens move the score: the answer is routed as its question was (an
        # answer word scoring high would otherwise switch a retain answer midway)
        running, state = sequence_scores(side.norm(dim=-1), real & prompt, self.agg, state)
        if not explicit:
            self._carry = state
        ratio = running / self.thresholds[:, None, None]
        best_ratio, best = ratio.max(0)  # (B, T): the memory most confident about this sequence
        chosen = side.gather(0, best[None, ..., None].expand(1, -1, -1, side.shape[-1]))[0]
        routed = (best_ratio > 1) & real
        return out + torch.where(routed[..., None], chosen, 0.0).to(out.dtype)

    def routed_prompts(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Which whole prompts (B, T, d_in) end up on a side memory by their last token."""
        if len(self) == 0:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        running, _ = sequence_scores(self.scores(x), real, self.agg)
        return (running[:, :, -1] / self.thresholds[:, None]).amax(0) > 1


def sequence_scores(token_scores: torch.Tensor, real: torch.Tensor, agg: str,
                    state: torch.Tensor | None = None, curve_only: bool = False):
    """Routing score of a sequence at each position from its token scores (..., B, T): the
    running maximum of the token scores (``max``) or of the mean token score so far (``mean``),
    padding excluded; both depend only on tokens up to the position. ``state`` (3, ..., B) =
    (running maximum, score sum, token count) carried over from the previous call of cached
    decoding. Returns (scores (..., B, T), new state); ``curve_only``: the per-position values
    before the running maximum (a token's score, or the mean so far)."""
    scores = token_scores * real
    if state is None:
        state = torch.zeros(3, *scores.shape[:-1], device=scores.device)
    best, total, count = state
    if agg == "max":
        curve = scores
    else:
        sums = total[..., None] + scores.cumsum(-1)
        counts = count[..., None] + real.float().cumsum(-1)
        curve = torch.where(real, sums / counts.clamp(min=1), 0.0)
        total, count = sums[..., -1], counts[..., -1]
    if curve_only:
        return curve
    running = torch.maximum(curve.cummax(-1).values, best[..., None])
    return running, torch.stack([running[..., -1], total, count.expand_as(total)])


@register_adapter(ADAPTER_KIND)
def _install(model, config: dict, state: dict[str, torch.Tensor]) -> None:
    """``config = {module}``, state ``deltas`` (M x d_out x d_in, W' - W per memory) and
    ``thresholds`` (M)."""
    module = model.get_submodule(config["module"])
    deltas = state["deltas"]
    if tuple(deltas.shape[1:]) != (module.out_features, module.in_features):
        raise ValueError(f"wise side memories for {config['module']!r} have shape "
                         f"{tuple(deltas.shape[1:])}, the model's layer {tuple(module.weight.shape)}")
    device = module.weight.device
    memories = WiseMemories(sequence_tracker(model), module.in_features, module.out_features,
                            config.get("act_agg", "max"), device)
    memories.deltas = deltas.float().to(device)
    memories.thresholds = state["thresholds"].float().to(device)
    memories.attach(model, config["module"])


class Wise(Method):
    name = "wise"
    uses_retain = False  # True when loc_source is 'retain'
    defaults = {
        "inner_params": None,
        "edit_lr": 1.0,
        "optimizer": "sgd",
        "n_iter": 70,
        "mask_ratio": 0.2,
        "norm_constraint": 1.0,
        "act_margin": [5.0, 20.0, 10.0],
        "act_ratio": 0.88,
        "act_agg": "max",
        "save_freq": 5,
        "merge_freq": 20,
        "merge_alg": "ties",
        "densities": 0.53,
        "weights": 1.0,
        "retrieve": True,
        "reg": "early_stop",
        "loc_source": "neutral",
        "loc_prompts": list(NEUTRAL_PROMPTS),
        "n_loc": 8,
        "loc_select": "hardest",
        "threshold_above_loc": True,
    }

    def __init__(self, hparams: dict):
        super().__init__(check_hparams(self.name, self.defaults, hparams, CHOICES))
        hp = self.hparams
        positive(self.name, hp, "edit_lr", "save_freq", "merge_freq", "densities", "n_loc")
        positive(self.name, hp, "n_iter", "norm_constraint", allow_zero=True)
        if not 0 < hp["mask_ratio"] <= 1:
            raise ValueError(f"wise: hyper-parameter 'mask_ratio' must be in (0, 1], got {hp['mask_ratio']}")
        if not 0 < hp["act_ratio"] <= 1:
            raise ValueError(f"wise: hyper-parameter 'act_ratio' must be in (0, 1], got {hp['act_ratio']}")
        if hp["densities"] > 1:
            raise ValueError(f"wise: hyper-parameter 'densities' must be in (0, 1], got {hp['densities']}")
        margin = hp["act_margin"]
        if (len(margin) != 3 or not all(isinstance(v, (int, float)) for v in margin)
                or not 0 <= margin[0] < margin[1]):
            raise ValueError(f"wise: hyper-parameter 'act_margin' must be [alpha, beta, gamma] with "
                             f"0 <= alpha < beta (out-of-scope scores below alpha, edited ones "
                             f"above beta), got {margin!r}")
        if hp["merge_freq"] % hp["save_freq"]:
            raise ValueError(f"wise: hyper-parameter 'merge_freq' ({hp['merge_freq']}) must be a "
                             f"multiple of 'save_freq' ({hp['save_freq']}): a memory is merged "
                             f"from whole shards")
        if hp["loc_source"] == "neutral" and (not hp["loc_prompts"] or not all(
                isinstance(p, str) and p.strip() for p in hp["loc_prompts"])):
            raise ValueError("wise: hyper-parameter 'loc_prompts' must be a non-empty list of texts "
                             "(the out-of-scope prompts of the activation margin)")
        self.uses_retain = hp["loc_source"] == "retain"

    def unlearn(self, ctx: UnlearnContext) -> Patch:
        check_single_questions(self.name, ctx)
        if self.uses_retain:
            if not ctx.retain:
                raise ValueError("wise: loc_source is 'retain' but the retain set is empty")
            loc = [item["question"] for item in ctx.retain]
        else:
            loc = list(self.hparams["loc_prompts"])
        with frozen(ctx.model):
            editor = WiseEditor(ctx.model, ctx.spec, ctx.formatter, self.hparams, loc, ctx.log, ctx.seed)
            for item in ctx.forget:
                editor.edit(item["question"], item["target"])
        report = editor.report()
        ctx.log.info("wise: %d edits in %d side memories (thresholds %s); %d/%d edited prompts and "
                     "%d/%d out-of-scope prompts route to a side memory; %.2f s per edit",
                     report["edits"], report["memories"], report["thresholds"],
                     report["edited_prompts_routed"], report["edits"], report["loc_prompts_routed"],
                     report["loc_prompts"], report["seconds_per_edit"])
        patch = Patch(self.name, ctx.spec.name, adapters=[editor.adapter()])
        patch.info.update(report)
        return patch


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _Memory:
    """The side memory being written: its consolidated delta, the task vectors of its finished
    shards since then, and the prompt activations of all its edits (for its threshold)."""

    def __init__(self, start: torch.Tensor):
        self.start = start
        self.shards: list[torch.Tensor] = []
        self.since_merge = 0
        self.edit_inputs: list[torch.Tensor] = []  # (T, d_in) per edit


class WiseEditor:
    """Sequential WISE editing of one model: ``edit`` one request at a time; after each call the
    installed adaptor answers with every edit so far."""

    def __init__(self, model, spec, formatter, hparams: dict, loc_questions: list[str], log, seed=0):
        self.model, self.formatter, self.hp, self.log = model, formatter, hparams, log
        self.module = resolve_inner_module("wise", model, spec, hparams["inner_params"])
        linear = model.get_submodule(self.module)
        self.device = linear.weight.device
        self.memories = adaptor_of(model, self.module)
        if self.memories is None:
            self.memories = WiseMemories(sequence_tracker(model), linear.in_features,
                                         linear.out_features, hparams["act_agg"],
                                         self.device).attach(model, self.module)
        elif not isinstance(self.memories, WiseMemories):
            raise RuntimeError(f"{self.module} already carries a {type(self.memories).__name__}")
        self.closed = len(self.memories)  # memories installed before stay as they are
        self.generator = torch.Generator().manual_seed(seed)
        self.loc_x, self.loc_real = self._inputs(loc_questions)
        self.loc_ids = [formatter.prompt_ids(q) for q in loc_questions]
        self._compact_loc()
        self.memory = _Memory(torch.zeros_like(linear.weight, dtype=torch.float32))
        self.shard: torch.Tensor | None = None  # the shard being trained (a full delta)
        self.mask: torch.Tensor | None = None
        self.in_shard = 0
        self.history: list[torch.Tensor] = []  # prompt activations of every edit
        self.times: list[float] = []
        self.merges = 0

    @torch.no_grad()
    def _inputs(self, questions: list[str], chunk: int = 32):
        """The layer's input for chat-formatted prompts, right padded (fixed: editing the layer
        does not change its input)."""
        xs, reals = [], []
        for i in range(0, len(questions), chunk):
            ids, mask = prompt_batch(self.formatter, questions[i:i + chunk], self.device)
            with capture_input(self.model, self.module) as seen:
                self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            xs.append(seen[0])
            reals.append(mask.bool())
        width = max(x.shape[1] for x in xs)
        x = torch.cat([F.pad(x, (0, 0, 0, width - x.shape[1])) for x in xs])
        real = torch.cat([F.pad(r, (0, width - r.shape[1])) for r in reals])
        return x, real

    def _compact_loc(self) -> None:
        """Every out-of-scope prompt's activations once, for scoring them all each step: the
        prefix all of them share (the chat template's preamble) has the same activations in each,
        so it is kept once."""
        ids = self.loc_ids
        shared = min(_common_prefix(ids[0], other) for other in ids) if len(ids) > 1 else 0
        rows, owners = [self.loc_x[0, :shared]], [torch.full((shared,), -1)]
        for i, length in enumerate(self.loc_real.sum(1).tolist()):
            rows.append(self.loc_x[i, shared:length])
            owners.append(torch.full((length - shared,), i))
        self.loc_rows = torch.cat(rows).float()
        self.loc_owner = torch.cat(owners).to(self.device)

    @torch.no_grad()
    def _loc_scores(self, delta: torch.Tensor) -> torch.Tensor:
        """Routing score of every out-of-scope prompt under ``delta`` (N,)."""
        n = len(self.loc_x)
        if self.hp["act_agg"] == "max":
            tokens = F.linear(self.loc_rows, delta).norm(dim=-1)
            own = self.loc_owner >= 0
            per = torch.zeros(n, device=self.device).scatter_reduce(
                0, self.loc_owner[own], tokens[own], "amax", include_self=True)
            return torch.maximum(per, tokens[~own].max()) if (~own).any() else per
        return torch.cat([sequence_scores(F.linear(self.loc_x[i:i + 32].float(), delta).norm(dim=-1),
                                          self.loc_real[i:i + 32], "mean")[0].amax(-1)
                          for i in range(0, n, 32)])

    def edit(self, question: str, target: str) -> None:
        start_time = time.perf_counter()
        hp = self.hp
        if self.shard is None:  # a new knowledge shard: own random subspace of the memory
            self.shard = self.memory.start.clone()
            self.mask = (torch.rand(self.shard.shape, generator=self.generator)
                         < hp["mask_ratio"]).to(self.device)
            self.in_shard = 0
        where = f"memory {self.closed + 1}, shard {len(self.memory.shards) + 1}"
        batch = EditBatch(self.formatter, [(question, target)], self.model, self.module)
        prompt = batch.prompt_mask & batch.real
        # a token whose whole prefix also starts an out-of-scope prompt (the chat template's
        # system preamble, a shared first word) has exactly the same activation there, so it
        # cannot tell them apart: the edit's score is taken after that prefix, while the
        # out-of-scope term keeps those shared positions low
        ids = self.formatter.prompt_ids(question)
        shared = max(_common_prefix(ids, other) for other in self.loc_ids)
        if shared >= len(ids):
            raise ValueError(f"wise: the edited prompt {question!r} is also an out-of-scope prompt")
        distinct = prompt.clone()
        distinct[:, :shared] = False
        alpha, beta, gamma = hp["act_margin"]
        delta = torch.nn.Parameter(self.shard.clone())
        opt = (torch.optim.SGD if hp["optimizer"] == "sgd" else torch.optim.Adam)([delta], lr=hp["edit_lr"])
        ratio, agg = hp["act_ratio"], hp["act_agg"]
        steps = 0
        while True:
            opt.zero_grad(set_to_none=True)
            side = F.linear(batch.x.float(), delta)
            token_scores = side.norm(dim=-1)
            # the edit's score from its own positions only: a running value there would carry
            # the shared preamble's scores along
            s_edit = (sequence_scores(token_scores, batch.real, agg, curve_only=True) * distinct).amax()
            running, _ = sequence_scores(token_scores, prompt, agg)
            with torch.no_grad():
                # train as it will be used: the side memory answers from the first position whose
                # routing score reaches the routing ratio of the edit's score, the main memory
                # before that (the shared preamble stays on the main memory at inference)
                gate = (running >= ratio * s_edit) & batch.real
            nll, exact = batch.target_stats(batch.base_out + side * gate[..., None])
            n_loc = min(hp["n_loc"], len(self.loc_x))
            if hp["loc_select"] == "hardest":
                if steps % LOC_RESCORE_EVERY == 0:  # the hardest prompts change slowly
                    all_out = self._loc_scores(delta.detach())
                    pick = all_out.topk(n_loc).indices
                    out_max, out_fresh = float(all_out.max()), True
                else:
                    out_fresh = False
            else:
                pick = torch.randint(len(self.loc_x), (n_loc,), generator=self.generator).to(self.device)
            loc_scores = F.linear(self.loc_x[pick].float(), delta).norm(dim=-1)
            s_out = sequence_scores(loc_scores, self.loc_real[pick], agg)[0].amax(-1)
            margin = (F.relu(s_out - alpha) + F.relu(beta - s_edit)
                      + F.relu(gamma - (s_edit - s_out))).mean()
            # done when the edit works: greedy decoding gives the target, and its score reaches
            # beta and would route it while the out-of-scope prompts (all of them with
            # `hardest`, else the sampled ones) stay below (alpha itself may be out of reach at
            # another model's score scale). A weak edit would set a low threshold for its whole
            # memory: it is the weakest edit that fixes it
            score = float(s_edit.detach())
            if hp["loc_select"] != "hardest":
                out_max = float(s_out.detach().max())
            elif exact and score >= beta and not out_fresh:  # stop only on current scores
                out_max, out_fresh = float(self._loc_scores(delta.detach()).max()), True
            routed = score >= beta and score * ratio > out_max
            if steps == hp["n_iter"] or (hp["reg"] == "early_stop" and exact and routed):
                break
            (nll + margin).backward()
            delta.grad *= self.mask
            opt.step()
            if hp["norm_constraint"]:
                with torch.no_grad():
                    limit = hp["norm_constraint"]
                    delta.copy_(self.memory.start + (delta - self.memory.start).clamp(-limit, limit))
            steps += 1
        if hp["loc_select"] == "hardest" and not out_fresh:
            out_max = float(self._loc_scores(delta.detach()).max())
        self.shard = delta.detach()
        self.in_shard += 1
        self.memory.since_merge += 1
        self.memory.edit_inputs.append(batch.x[0, prompt[0]])
        self.history.append(batch.x[0, prompt[0]])
        self._after_edit()
        self.times.append(time.perf_counter() - start_time)
        self.log.info("wise: edit %d (%s): %d steps, target NLL %.3f, greedy %s; score on the edit "
                      "%.2f, out-of-scope max %.2f; %.1f s", len(self.times), where, steps,
                      float(nll.detach()), "exact" if exact else "not exact", float(s_edit.detach()),
                      out_max, self.times[-1])

    def _after_edit(self) -> None:
        hp, memory = self.hp, self.memory
        if self.in_shard == hp["save_freq"]:
            memory.shards.append(self.shard - memory.start)
            self.shard = None
        if memory.since_merge == hp["merge_freq"]:  # whole shards: merge_freq % save_freq == 0
            merged = self._merged()
            self.merges += 1
            if hp["retrieve"]:
                self._publish(merged, close=True)
                self.memory = _Memory(torch.zeros_like(memory.start))
                return
            memory.start, memory.shards, memory.since_merge = merged, [], 0
        self._publish(self._merged(), close=False)

    def _merged(self) -> torch.Tensor:
        """The open memory with every edit so far: consolidated state + TIES of its shards' task
        vectors (the shard in training included)."""
        vectors = list(self.memory.shards)
        if self.shard is not None:
            vectors.append(self.shard - self.memory.start)
        if not vectors:
            return self.memory.start
        return self.memory.start + ties_merge(vectors, self.hp["densities"], self.hp["weights"])

    def _publish(self, delta: torch.Tensor, close: bool) -> None:
        """Install the open memory in the adaptor, with its threshold from all its edits."""
        scores = torch.stack([
            sequence_scores(self.memories.scores(x[None], delta[None])[0],
                            torch.ones_like(x[None, :, 0], dtype=torch.bool), self.hp["act_agg"])[0].max()
            for x in self.memory.edit_inputs])
        threshold = self.hp["act_ratio"] * scores.min()
        if self.hp["threshold_above_loc"]:
            # merged shards add up: each kept its own out-of-scope scores low, but their common
            # part (the push toward a refusal) sums, and a merged memory of 5 factual edits
            # routed 72 of 177 retain questions. No out-of-scope prompt may reach the threshold,
            # even if a weak edit then stays on the main memory
            threshold = torch.maximum(threshold, self._loc_scores(delta).max() * (1 + 1e-3))
        slot = self.closed
        self.memories.deltas = torch.cat([self.memories.deltas[:slot], delta[None]])
        self.memories.thresholds = torch.cat([self.memories.thresholds[:slot], threshold[None]])
        if close:
            self.closed += 1

    @torch.no_grad()
    def report(self) -> dict:
        every = lambda x: torch.ones_like(x[None, :, 0], dtype=torch.bool)  # noqa: E731
        routed = sum(int(self.memories.routed_prompts(x[None], every(x))) for x in self.history)
        loc_routed = sum(int(self.memories.routed_prompts(self.loc_x[i:i + 64],
                                                          self.loc_real[i:i + 64]).sum())
                         for i in range(0, len(self.loc_x), 64))
        return {"edits": len(self.times), "memories": len(self.memories), "merges": self.merges,
                "thresholds": [round(float(t), 3) for t in self.memories.thresholds],
                "edited_prompts_routed": routed, "loc_prompts": len(self.loc_x),
                "loc_prompts_routed": loc_routed,
                "seconds_per_edit": round(sum(self.times) / max(1, len(self.times)), 3),
                "edit_seconds": [round(t, 3) for t in self.times],
                "module": self.module}

    def adapter(self) -> Adapter:
        return Adapter(ADAPTER_KIND, {"module": self.module, "act_agg": self.memories.agg},
                       {"deltas": self.memories.deltas.detach().cpu().clone(),
                        "thresholds": self.memories.thresholds.detach().cpu().clone()})
