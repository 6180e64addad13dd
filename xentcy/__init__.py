"""xentcy: exact, fast softmax cross-entropy and its gradient for any array library.

NumPy arrays run on a compiled Cython core; arrays of other array-API
libraries run on the path that fits them (see the README).
"""

try:
    from ._cpu import _core as _core  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only on an unbuilt tree
    raise ImportError(
        "xentcy's compiled core (xentcy._cpu._core) is not built. From the source tree run\n"
        "    python -m pip install -e .\n"
        "(or `python setup.py build_ext --inplace`) and import xentcy again."
    ) from err

from ._api import cross_entropy, cross_entropy_grad, log_softmax, logsumexp, loss_and_grad, softmax
from ._eval import Evaluation, Evaluator, evaluate, target_rank
from ._linear import linear_cross_entropy, linear_loss_and_grad
from ._loss import CrossEntropyLoss

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss",
    "Evaluation",
    "Evaluator",
    "cross_entropy",
    "cross_entropy_grad",
    "evaluate",
    "linear_cross_entropy",
    "linear_loss_and_grad",
    "log_softmax",
    "logsumexp",
    "loss_and_grad",
    "softmax",
    "target_rank",
]
