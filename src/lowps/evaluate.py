"""Deprecated alias of `lowps.agreement` (removed in 0.4).

In lowps "evaluate" means classification accuracy (``lowps eval``); agreement with human
judgements is "scoring": ``evaluate_bapps`` is now `lowps.agreement.score_bapps` and
``evaluate_judgements`` `lowps.agreement.score_judgements`.
"""
import warnings

from .agreement import *  # noqa: F403
from .agreement import __all__ as _agreement_all
from .agreement import score_bapps as evaluate_bapps
from .agreement import score_judgements as evaluate_judgements

__all__ = [*_agreement_all, "evaluate_bapps", "evaluate_judgements"]

warnings.warn("lowps.evaluate is deprecated: use lowps.agreement (score_bapps, score_judgements)", DeprecationWarning,
              stacklevel=2)
