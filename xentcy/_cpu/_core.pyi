"""Types of the compiled CPU core (``_core.pyx``): float32 or float64 arrays, one dtype a call;
2-D arrays have their classes at unit stride. See ``_core.pyx`` for what each computes."""

from typing import Any

import numpy as np
import numpy.typing as npt

_Floats = npt.NDArray[np.float32] | npt.NDArray[np.float64]
_Indices = npt.NDArray[np.intp]
_Doubles = npt.NDArray[np.float64]

def max_threads() -> int: ...
def set_max_threads(n: int) -> int: ...
def isa() -> str: ...
def supported_isas() -> list[str]: ...
def set_isa(name: str) -> str: ...
def vector_exp(x: _Floats, out: _Floats) -> None: ...
def vector_tanh(x: _Floats, out: _Floats, sech2: _Floats) -> None: ...
def cross_entropy_index(
    A: _Floats,
    y: _Indices,
    weight: _Floats | None,
    weight_sum: float,
    eps: float,
    ignore_index: int,
    scale: float,
    G: _Floats | None,
    loss: _Doubles,
    z_loss: float = ...,
    temperature: float = ...,
    softcap: float = ...,
) -> None: ...
def cross_entropy_prob(
    A: _Floats,
    Q: _Floats,
    weight: _Floats | None,
    eps: float,
    scale: float,
    G: _Floats | None,
    loss: _Doubles,
    z_loss: float = ...,
    temperature: float = ...,
    softcap: float = ...,
) -> None: ...
def evaluate_index(
    A: _Floats,
    y: _Indices,
    weight: _Floats | None,
    ignore_index: int,
    loss: _Doubles,
    rank: _Indices,
    entropy: _Doubles,
) -> None: ...
def compare_rows(A: _Floats, B: _Floats, kl: _Doubles, agree: _Indices) -> None: ...
def softmax(A: _Floats, out: _Floats, log_space: bool) -> None: ...
def logsumexp(A: _Floats, out: _Floats) -> None: ...
def class_index_summary(
    y: _Indices, weight: _Doubles | None, ignore_index: int, num_classes: int
) -> tuple[float, int | None]: ...
def xla_cross_entropy() -> Any: ...
