"""CrossEntropyLoss: the forward/backward protocol of the spec, on the fused pass."""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from . import _generic
from ._api import Reduction, loss_and_grad, softmax
from ._typing import Array


class CrossEntropyLoss:
    """Softmax cross-entropy as a layer: ``L = loss.forward(A, Y)``, ``dLdA = loss.backward()``.

    ``forward`` computes the loss and its gradient in one fused pass
    (:func:`xentcy.loss_and_grad`), so ``backward`` costs nothing more.

    Parameters
    ----------
    axis, weight, ignore_index, label_smoothing, reduction, z_loss, softcap, temperature
        As in :func:`xentcy.cross_entropy`.

    Attributes
    ----------
    A, Y : array
        The logits and target of the last ``forward`` (references, not copies).
    N : int
        The number of samples of the last ``forward`` (the product of the batch axes).
    C : int
        The number of classes of the last ``forward``.
    softmax : array
        softmax(A) along ``axis``, computed when first read (of the final
        logits, A / temperature soft-capped, where those options are set: the
        model's distribution).

    Raises
    ------
    TypeError, ValueError
        ``forward`` raises as :func:`xentcy.cross_entropy`.

    See Also
    --------
    loss_and_grad : the fused pass the layer runs.
    xentcy.torch.CrossEntropyLoss : a torch module, differentiable by autograd.

    Examples
    --------
    The spec's worked example:

    >>> import numpy as np
    >>> import xentcy
    >>> A = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    >>> Y = np.array([[0, 1, 0], [1, 0, 0]])
    >>> xent = xentcy.CrossEntropyLoss()
    >>> L = xent.forward(A, Y)
    >>> L
    array(2.01850839)
    >>> L.round(4), L.item()
    (np.float64(2.0185), 2.0185083947418834)
    >>> xent.backward().round(3)
    array([[ 0.33 , -0.379,  0.049],
           [-0.464,  0.243,  0.22 ]])
    >>> xent.softmax.round(3)
    array([[0.659, 0.242, 0.099],
           [0.073, 0.487, 0.44 ]])
    """

    def __init__(
        self,
        *,
        axis: int = -1,
        weight: Array = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
        z_loss: float = 0.0,
        softcap: float | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.axis = axis
        self.z_loss = z_loss
        self.softcap = softcap
        self.temperature = temperature
        self.weight = weight
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.A: Any = None
        self.Y: Any = None
        self.N: int | None = None
        self.C: int | None = None
        self._grad: Any = None
        self._softmax: Any = None

    def __repr__(self) -> str:
        return (
            f"CrossEntropyLoss(axis={self.axis}, weight={self.weight!r}, "
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}"
            + (f", z_loss={self.z_loss}" if self.z_loss != 0.0 else "")
            + (f", softcap={self.softcap}" if self.softcap is not None else "")
            + (f", temperature={self.temperature}" if self.temperature != 1.0 else "")
            + ")"
        )

    def forward(self, A: Any, Y: Any, *, denominator: float | None = None) -> Any:
        """The loss of logits ``A`` against target ``Y``; keeps the gradient for
        :meth:`~xentcy.CrossEntropyLoss.backward`.

        Parameters
        ----------
        A, Y : array
            The logits and the target, as :func:`xentcy.cross_entropy` takes them.
        denominator : float, optional
            For this batch, what the mean divides by instead (see
            :func:`xentcy.cross_entropy`), e.g. the target tokens of all micro-batches.

        Returns
        -------
        array
            The loss, as :func:`xentcy.cross_entropy` returns it.
        """
        loss, grad = loss_and_grad(
            A,
            Y,
            axis=self.axis,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            z_loss=self.z_loss,
            softcap=self.softcap,
            temperature=self.temperature,
            denominator=denominator,
        )
        self.A, self.Y, self._grad, self._softmax = A, Y, grad, None
        self.C = int(A.shape[self.axis])
        self.N = math.prod(A.shape) // self.C if self.C else 0
        return loss

    __call__ = forward

    def backward(self) -> Any:
        """dL/dA of the last :meth:`~xentcy.CrossEntropyLoss.forward`.

        Returns
        -------
        array
            The gradient, of A's shape: (softmax(A) - Y) / N in the spec's case.
        """
        if self._grad is None:
            raise RuntimeError("CrossEntropyLoss.backward() needs a forward(A, Y) call first")
        return self._grad

    @property
    def softmax(self) -> Any:
        """softmax(A) along ``axis`` of the last :meth:`~xentcy.CrossEntropyLoss.forward`, computed
        on first read (of the final logits where ``softcap`` or ``temperature`` is set).

        Returns
        -------
        array
            The probabilities, of A's shape.
        """
        if self.A is None:
            raise RuntimeError("CrossEntropyLoss.softmax needs a forward(A, Y) call first")
        if self._softmax is None:
            # (of the final logits: A itself without a temperature or a soft-cap)
            a, _ = _generic.final_logits(array_namespace(self.A), self.A, self.softcap, self.temperature)
            self._softmax = softmax(a, axis=self.axis)
        return self._softmax
