"""``base``: no unlearning. Its empty patch evaluates the starting model, the reference row of
every table."""

from ..patch import Patch
from . import Method, UnlearnContext


class Base(Method):
    name = "base"

    def unlearn(self, ctx: UnlearnContext) -> Patch:
        return Patch(self.name, ctx.spec.name)
