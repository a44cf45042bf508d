"""alkn_core: continual LLM unlearning (ALKN and baselines). Depends on torch + transformers
only; nothing of ours imports below it."""

from .methods import METHODS
from .params import DEFAULT_QA_TEMPLATE
from .state import UnlearnState
from .task_vector import TaskVector
from .unlearn import UnlearnResult, method_params, unlearn

__all__ = ["DEFAULT_QA_TEMPLATE", "METHODS", "TaskVector", "UnlearnResult", "UnlearnState",
           "method_params", "unlearn"]
