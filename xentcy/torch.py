"""PyTorch integration: xentcy's fused loss as a differentiable torch operation.

``xentcy.torch.cross_entropy`` and ``xentcy.torch.CrossEntropyLoss`` take PyTorch's
argument names and its (N, C, d1, ...) layout (the class axis is 1) and train: the
forward pass is xentcy's fused kernel, which computes the gradient with the loss, and
the backward pass multiplies that saved gradient by the incoming one, or, where that is
1 (``loss.backward()`` of a mean or a sum, eager, on the CPU), hands it over without a
pass over it (it becomes the leaf's ``.grad``; a retained graph computes it again for a
second backward). They work in eager
mode, under ``torch.compile`` (no graph break: the kernel is the custom operator
``xentcy::cross_entropy``) and with ``torch.func`` (``grad``, ``vmap``).

CPU tensors are viewed as NumPy arrays without a copy and run on the CPU core; CUDA
tensors, where CuPy is installed, run on xentcy's CUDA kernels on torch's current stream;
other devices take the generic path. Importing this module imports torch;
``import xentcy`` does not.

Differences from ``torch.nn.functional.cross_entropy``:

* for float16 and bfloat16 logits the loss is float32 (torch's autocast also computes
  this loss in float32; eager torch returns the logits' dtype). The gradient has the
  logits' dtype;
* a second derivative raises a RuntimeError (the backward reuses the saved gradient);
* where every target is ignored or has weight 0, the mean is NaN and the gradient is 0
  (torch's gradient is NaN there).
"""

from __future__ import annotations

from typing import Any

import torch

from . import _api, _checks, _linear

__all__ = ["CrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]

_HALF = (torch.float16, torch.bfloat16)


def _loss_meta(logits: torch.Tensor, reduction: str, axis: int) -> torch.Tensor:
    dtype = torch.float32 if logits.dtype in _HALF else logits.dtype
    shape = logits.shape[:axis] + logits.shape[axis + 1 :] if reduction == "none" else ()
    return logits.new_empty(shape, dtype=dtype)


@torch.library.custom_op("xentcy::cross_entropy", mutates_args=())
def _fused(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    axis: int,
    denominator: float | None,
    z_loss: float,
    softcap: float | None,
    temperature: float,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, gradient) of xentcy's fused pass; the gradient is empty without ``want_grad``."""
    # (detached views: the op runs below autograd, but a tensor may still say requires_grad,
    # which would send it to the generic path)
    x, target = logits.detach(), target.detach()
    weight = None if weight is None else weight.detach()
    if x.dtype in _HALF and x.device.type == "cpu":
        x = x.float()  # the CPU core computes float32 and float64
    options: dict[str, Any] = dict(
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
        denominator=denominator,
        z_loss=z_loss,
        softcap=softcap,
        temperature=temperature,
    )
    if not want_grad:
        loss = _api.cross_entropy(x, target, **options)
        return loss.to(_loss_meta(logits, reduction, axis).dtype), logits.new_empty((0,))
    loss, grad = _api.loss_and_grad(x, target, **options)
    return loss.to(_loss_meta(logits, reduction, axis).dtype), grad.to(logits.dtype)


@_fused.register_fake
def _fused_fake(logits, target, weight, ignore_index, label_smoothing, reduction, axis, denominator,
                z_loss, softcap, temperature, want_grad):  # fmt: skip
    grad = torch.empty_like(logits) if want_grad else logits.new_empty((0,))
    return _loss_meta(logits, reduction, axis), grad


@torch.library.register_vmap("xentcy::cross_entropy")
def _fused_vmap(info, in_dims, logits, target, weight, *options):
    """vmap: one fused call per problem of the batch (each has its own mean), stacked."""

    def pick(x, dim, i):
        return x if x is None or dim is None else x.select(dim, i)

    outs = [
        _fused(
            pick(logits, in_dims[0], i), pick(target, in_dims[1], i), pick(weight, in_dims[2], i), *options
        )
        for i in range(info.batch_size)
    ]
    return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])), (0, 0)


class _NoSecondDerivative(torch.autograd.Function):
    """The identity, whose own derivative is a clear error: the first derivative is a saved
    tensor, so a second one would silently be 0."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, anchor):
        # ``anchor``: the logits, so that the result is part of the graph of a second derivative
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(
            "xentcy.torch.cross_entropy has no second derivative (its backward reuses the gradient "
            "of the fused forward pass); use torch.nn.functional.cross_entropy for double backward"
        )


class _CrossEntropy(torch.autograd.Function):
    """The autograd of the fused op (a torch.autograd.Function, which torch.func takes, rather
    than register_autograd, which torch.func.grad does not)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, weight, *options):
        # (options: ignore_index, label_smoothing, reduction, axis, denominator, z_loss, softcap,
        # temperature)
        return _fused(logits, target, weight, *options, True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, grad = output
        logits, target, weight = inputs[:3]
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # no N x C zeros for the gradient output's gradient
        ctx.options = inputs[3:]
        ctx.reduction, ctx.axis = inputs[5], inputs[6]
        # Eager, the gradient is held outside save_for_backward, so that a backward whose
        # incoming gradient is 1 can hand it over without a pass over it (see backward);
        # torch.compile and torch.func need every tensor in save_for_backward.
        ctx.eager = not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active())
        if ctx.eager:
            ctx.save_for_backward(logits, target, weight)
            ctx.grad = grad
        else:
            ctx.save_for_backward(grad, logits)  # (the logits: the anchor of a 2nd derivative)

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_grad):
        if grad_loss is None:
            return (None,) * 11
        if not ctx.eager:
            grad, logits = ctx.saved_tensors
        else:
            logits, target, weight = ctx.saved_tensors
            grad = ctx.grad
            if grad is None:  # handed over by an earlier backward (retain_graph): again
                grad = _fused(logits.detach(), target, weight, *ctx.options, True)[1]
        if torch.is_grad_enabled():  # create_graph=True: a second derivative may follow
            out = _NoSecondDerivative.apply(_scaled(grad, grad_loss, ctx), logits)
        elif ctx.eager and _is_one(grad_loss):
            # loss.backward() of a mean or sum: the saved gradient is the answer. It is handed
            # over, not copied: with no reference left here, AccumulateGrad takes it as the
            # leaf's .grad (a copy would cost a pass and, in torch's allocator, the page
            # faults of N x C fresh memory: 90 ms at (2048, 32000) on this VM).
            out, ctx.grad = grad, None
        else:
            out = _scaled(grad, grad_loss, ctx)
        return out, *(None,) * 10


def _scaled(grad: torch.Tensor, grad_loss: torch.Tensor, ctx) -> torch.Tensor:
    """The saved gradient times the incoming one (a new tensor: gradcheck and retain_graph
    run the backward more than once)."""
    scale = grad_loss.unsqueeze(ctx.axis) if ctx.reduction == "none" else grad_loss
    return (grad * scale).to(grad.dtype)


def _is_one(grad_loss: torch.Tensor) -> bool:
    """Whether the incoming gradient is known to be exactly 1, where reading it costs nothing:
    an eager CPU tensor (not traced by torch.compile, not wrapped by torch.func, not on a GPU,
    where reading it would wait for the device)."""
    return (
        grad_loss.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(grad_loss)
        and bool((grad_loss == 1).all())
    )


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    axis: int = 1,
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of ``logits`` against ``target``, differentiable by autograd.

    The arguments of ``torch.nn.functional.cross_entropy`` (the class axis is 1, or 0 for
    1-D logits); the results agree with it to rounding (float32 and float64), except as
    the module's docstring says.

    Parameters
    ----------
    logits : torch.Tensor
        float32, float64, float16 or bfloat16, shaped (C,), (N, C) or (N, C, d1, ...).
    target : torch.Tensor
        Class indices (int64, the logits' shape without the class axis) or class
        probabilities (the logits' shape).
    weight : torch.Tensor, optional
        C class weights.
    ignore_index : int, default -100
        Class-index targets equal to it count for nothing.
    label_smoothing : float, default 0.0
        ε in [0, 1].
    reduction : {"mean", "sum", "none"}, default "mean"
        As in torch.
    axis : int, default 1
        The class axis.
    z_loss, softcap, temperature
        As in :func:`xentcy.cross_entropy`: the logits are divided by the
        temperature, soft-capped to softcap * tanh(x / softcap), and z_loss * lse^2
        is added to each counted sample's loss.
    denominator : float, optional
        With "mean", what it divides by instead: e.g. the target tokens of every
        micro-batch of a gradient accumulation (``num_items_in_batch``).

    Returns
    -------
    torch.Tensor
        The loss: 0-d, or per sample for ``reduction="none"``; float32 for half-precision
        logits, else the logits' dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`xentcy.cross_entropy`; logits that are not a torch.Tensor.

    See Also
    --------
    CrossEntropyLoss : the same as a module.
    xentcy.cross_entropy : the loss of any array library, not differentiable.

    Examples
    --------
    >>> import torch
    >>> import xentcy.torch as xt
    >>> A = torch.tensor([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]], requires_grad=True)
    >>> loss = xt.cross_entropy(A, torch.tensor([1, 0]))
    >>> loss
    tensor(2.0185, grad_fn=<_CrossEntropyBackward>)
    >>> loss.backward()
    >>> A.grad
    tensor([[ 0.3295, -0.3788,  0.0493],
            [-0.4636,  0.2434,  0.2202]])
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.tensor(target, device=logits.device)
    if logits.ndim == 1 and axis == 1:
        axis = 0  # torch's rule for unbatched logits: (C,)
    if not -max(logits.ndim, 1) <= axis < max(logits.ndim, 1):
        raise ValueError(f"axis {axis} is out of range for {logits.ndim}-D logits")
    axis = axis % max(logits.ndim, 1)
    d = _checks.check_denominator(denominator, reduction)  # (the op takes floats)
    z, cap, t = _checks.check_loss_options(z_loss, softcap, temperature)
    args = (logits, target, weight, int(ignore_index), float(label_smoothing), str(reduction), axis, d,
            z, cap, t)  # fmt: skip
    if torch.is_grad_enabled() and logits.requires_grad:
        return _CrossEntropy.apply(*args)[0]
    return _fused(*args, False)[0]


# -- the linear layer and its loss, without the N x V logits (xentcy.linear_cross_entropy)


def _empty_like_none(x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,)) if x is None else x


@torch.library.custom_op("xentcy::linear_cross_entropy", mutates_args=())
def _linear_fused(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    chunk_size: int,
    denominator: float | None,
    z_loss: float,
    softcap: float | None,
    temperature: float,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d_hidden, d_classifier, d_bias) of xentcy's chunked pass; the gradients are
    empty without ``want_grad``, d_bias without a bias; ``row_scale`` scales each row's
    gradient (reduction="none")."""
    tensors = (hidden, classifier, target, bias, weight, row_scale)
    h, w, y, b, wt, rs = (None if x is None else x.detach() for x in tensors)
    options = _linear._options(wt, ignore_index, label_smoothing, reduction, z_loss, softcap, temperature)
    loss, d_h, d_w, d_b = _linear._run(h, w, y, b, options, chunk_size or None, want_grad, rs, denominator)
    if not want_grad:  # (three distinct empty tensors: a custom op's outputs may not alias)
        return loss, *(hidden.new_empty((0,)) for _ in range(3))
    return loss, d_h, d_w, _empty_like_none(d_b, hidden)


@_linear_fused.register_fake
def _linear_fused_fake(hidden, classifier, target, bias, weight, row_scale, ignore_index, label_smoothing,
                       reduction, chunk_size, denominator, z_loss, softcap, temperature,
                       want_grad):  # fmt: skip
    loss = hidden.new_empty(tuple(hidden.shape[:-1]) if reduction == "none" else ())
    if not want_grad:
        return loss, *(hidden.new_empty((0,)) for _ in range(3))
    d_b = torch.empty_like(bias) if bias is not None else hidden.new_empty((0,))
    return loss, torch.empty_like(hidden), torch.empty_like(classifier), d_b


class _LinearCrossEntropy(torch.autograd.Function):
    """The autograd of the chunked linear loss: for "mean" and "sum" the forward computes the
    gradients with the loss and the backward scales them; for "none" (a factor a row) the
    backward runs the chunks again with the rows' factors."""

    @staticmethod
    def forward(hidden, classifier, target, bias, weight, *options):
        # (options: ignore_index, label_smoothing, reduction, chunk_size, denominator, z_loss,
        # softcap, temperature)
        reduction = options[2]
        return _linear_fused(hidden, classifier, target, bias, weight, None, *options, reduction != "none")

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, d_h, d_w, d_b = output
        ctx.mark_non_differentiable(d_h, d_w, d_b)
        ctx.set_materialize_grads(False)
        ctx.options = inputs[5:]
        # as in _CrossEntropy: eager, the gradients are held outside save_for_backward so that a
        # backward whose incoming gradient is 1 hands them over (d_classifier alone is V x H)
        ctx.eager = not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active())
        ctx.save_for_backward(*inputs[:5], *(() if ctx.eager else (d_h, d_w, d_b)))
        ctx.grads = (d_h, d_w, d_b) if ctx.eager else None

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if grad_loss is None:
            return (None,) * 13
        hidden, classifier, target, bias, weight, *saved = ctx.saved_tensors
        arrays = (hidden, classifier, target, bias, weight)
        if ctx.options[2] == "none":  # reduction: a factor a row, the chunks run again with them
            _, d_h, d_w, d_b = _linear_fused(*arrays, grad_loss, *ctx.options, True)
        else:
            grads = tuple(saved) if not ctx.eager else ctx.grads
            if grads is None:  # handed over by an earlier backward (retain_graph): again
                grads = _linear_fused(*arrays, None, *ctx.options, True)[1:]
            if ctx.eager and not torch.is_grad_enabled() and _is_one(grad_loss):
                (d_h, d_w, d_b), ctx.grads = grads, None
            else:
                d_h, d_w, d_b = (g * grad_loss for g in grads)
        if torch.is_grad_enabled():  # create_graph=True: a second derivative may follow
            d_h = _NoSecondDerivative.apply(d_h, hidden)
        return d_h, d_w, None, (d_b if bias is not None else None), *(None,) * 9


def linear_cross_entropy(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """:func:`xentcy.linear_cross_entropy` as a differentiable torch operation: the loss of
    ``F.linear(hidden, classifier, bias)`` against ``target``, without the N x V logits.

    The gradients with respect to ``hidden``, ``classifier`` and ``bias`` come from the same
    chunked pass as the loss ("mean", "sum"; for "none" the backward runs the chunks again).

    Parameters
    ----------
    hidden : torch.Tensor
        (..., H), float32 or float64.
    classifier : torch.Tensor
        (V, H), hidden's dtype.
    target : torch.Tensor
        int64 class indices, hidden's shape without its last axis.
    bias, weight, ignore_index, label_smoothing, reduction
        As in :func:`xentcy.linear_cross_entropy`.
    z_loss, softcap, temperature, denominator, chunk_size
        As in :func:`xentcy.linear_cross_entropy`.

    Returns
    -------
    torch.Tensor
        The loss: 0-d, or per row for ``reduction="none"``.

    Raises
    ------
    TypeError, ValueError
        As :func:`xentcy.linear_cross_entropy`.

    See Also
    --------
    xentcy.linear_loss_and_grad : the loss and its gradients, without autograd.

    Examples
    --------
    >>> import torch
    >>> import xentcy.torch as xt
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    >>> W = torch.tensor([[2.0, 0.1], [1.0, 2.0], [0.1, 1.9]], requires_grad=True)
    >>> loss = xt.linear_cross_entropy(h, W, torch.tensor([1, 0]))
    >>> loss.backward()
    >>> W.grad
    tensor([[ 0.3295, -0.4636],
            [-0.3788,  0.2434],
            [ 0.0493,  0.2202]])
    """
    d = _checks.check_denominator(denominator, reduction)  # (the op takes floats)
    z, cap, t = _checks.check_loss_options(z_loss, softcap, temperature)
    args = (hidden, classifier, target, bias, weight, int(ignore_index), float(label_smoothing),
            str(reduction), int(chunk_size or 0), d, z, cap, t)  # fmt: skip
    tracked = [x for x in (hidden, classifier, bias) if x is not None]
    if torch.is_grad_enabled() and any(x.requires_grad for x in tracked):
        return _LinearCrossEntropy.apply(*args)[0]
    return _linear_fused(*args[:5], None, *args[5:], False)[0]


class CrossEntropyLoss(torch.nn.Module):
    """A drop-in for ``torch.nn.CrossEntropyLoss`` on xentcy's fused kernel.

    Parameters
    ----------
    weight : torch.Tensor, optional
        C class weights (a buffer of the module: it follows ``.to(device)``).
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float, default 0.0
    z_loss : float, default 0.0
    softcap : float, optional
    temperature : float, default 1.0
        As in :func:`cross_entropy`.

    Raises
    ------
    TypeError, ValueError
        When called, as :func:`cross_entropy`.

    See Also
    --------
    cross_entropy : the function the module calls.

    Examples
    --------
    >>> import torch
    >>> import xentcy.torch as xt
    >>> criterion = xt.CrossEntropyLoss(label_smoothing=0.1)
    >>> A = torch.tensor([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    >>> criterion(A, torch.tensor([1, 0]))
    tensor(1.9552)
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.temperature = temperature

    weight: torch.Tensor | None

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, denominator: float | None = None
    ) -> torch.Tensor:
        """The loss of ``input`` against ``target``.

        Parameters
        ----------
        input, target : torch.Tensor
            As :func:`cross_entropy` takes them.
        denominator : float, optional
            As in :func:`cross_entropy`, for this batch.

        Returns
        -------
        torch.Tensor
            The loss.
        """
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            z_loss=self.z_loss,
            softcap=self.softcap,
            temperature=self.temperature,
            denominator=denominator,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
            + (f", z_loss={self.z_loss}" if self.z_loss != 0.0 else "")
            + (f", softcap={self.softcap}" if self.softcap is not None else "")
            + (f", temperature={self.temperature}" if self.temperature != 1.0 else "")
        )
