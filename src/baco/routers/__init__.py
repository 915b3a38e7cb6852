"""Per-token routing policies: pure functions from a StepView to "which rows does the base model write"."""

from baco.routers import builtin as _builtin  # noqa: F401  (registers the built-in routers)
from baco.routers import neighbours as _neighbours  # noqa: F401  (Nudging, EFT, contrastive guidance)
from baco.routers import judge as _judge  # noqa: F401  (the JUDGE ablation)
from baco.routers import cross as _cross  # noqa: F401  (CharED, UniTE, routers per word: cross-tokenizer pairs)
from baco.routers.registry import Router, RouterSpec, get_router, list_routers, register
from baco.routers.view import Route, StepView

__all__ = ["Route", "Router", "RouterSpec", "StepView", "get_router", "list_routers", "register"]
