"""The ``setting`` path component of a job: forget size, seed and the options later methods add.

``n40_s0`` = forget 40 items, split seed 0. Optional suffixes: ``_m4`` (query merging, 4 questions
per edit) and ``_t<name>`` (refusal target kind: ``idk``, the default, or ``self-improve``). One string per job keeps result
paths short and lets one wildcard carry every per-job choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SETTING_RE = r"n\d+_s\d+(?:_m\d+)?(?:_t[a-z0-9]+(?:-[a-z0-9]+)*)?"
_PARSE = re.compile(r"^n(\d+)_s(\d+)(?:_m(\d+))?(?:_t([a-z0-9]+(?:-[a-z0-9]+)*))?$")
DEFAULT_TARGET = "idk"
# refusal-target kinds: a seeded line of the refusal list (the default), or written by the model
# under study (paper §3.2, editunlearn/generate.py)
SELF_IMPROVE_TARGET = "self-improve"
TARGET_KINDS = (DEFAULT_TARGET, SELF_IMPROVE_TARGET)


@dataclass(frozen=True)
class Setting:
    n_forget: int
    seed: int
    merge: int = 1
    target: str = DEFAULT_TARGET

    @classmethod
    def parse(cls, text: str) -> "Setting":
        m = _PARSE.match(text)
        if not m:
            raise ValueError(f"bad setting {text!r}: expected e.g. 'n40_s0', 'n80_s0_m4', 'n40_s0_tidk'")
        n, seed, merge, target = m.groups()
        return cls(int(n), int(seed), int(merge) if merge else 1, target or DEFAULT_TARGET)

    @property
    def split_name(self) -> str:
        """Settings that share forget size and seed share one split file."""
        return f"n{self.n_forget}_s{self.seed}"

    def targets_path(self, dataset: str, model: str) -> str:
        """The refusal targets of the forget items, of this setting's kind. Self-improved targets
        are written by the model under study, so they are per model."""
        folder = f"resources/targets/{dataset}/{self.split_name}"
        if self.target == SELF_IMPROVE_TARGET:
            return f"{folder}/{model}/{SELF_IMPROVE_TARGET}.jsonl"
        if self.target not in TARGET_KINDS:
            raise ValueError(f"setting {self}: unknown refusal-target kind {self.target!r} "
                             f"(known: {', '.join(TARGET_KINDS)})")
        return f"{folder}/{self.target}.jsonl"

    def __str__(self) -> str:
        text = self.split_name
        if self.merge != 1:
            text += f"_m{self.merge}"
        if self.target != DEFAULT_TARGET:
            text += f"_t{self.target}"
        return text
