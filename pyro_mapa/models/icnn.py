"""Input-convex neural networks and the strictly monotone Brenier maps built from their gradients."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_positive_int

__all__ = ["ACTIVATIONS", "ICNN", "BrenierMap", "potential_gradient"]

#: Convex, non-decreasing activations an :class:`ICNN` accepts.
ACTIVATIONS = ("softplus", "leaky_relu")


def _check_hidden(hidden: object) -> tuple[int, ...]:
    if isinstance(hidden, int) or not isinstance(hidden, Sequence) or len(hidden) == 0:
        raise ValueError(
            f"hidden must be a non-empty sequence of layer widths, e.g. (50, 50); got {hidden!r}"
        )
    return tuple(check_positive_int(h, "hidden[i]") for h in hidden)


def _inverse_softplus(w: Tensor) -> Tensor:
    """The ``r`` with ``softplus(r) = w`` for ``w > 0`` (stable for small ``w``)."""
    return w + torch.log(-torch.expm1(-w))


def check_input(name: str, y: Tensor, dim: int) -> None:
    """Raises if ``y`` is not a floating tensor of shape ``(..., dim)``."""
    if not isinstance(y, Tensor) or not y.is_floating_point():
        kind = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"{name} must be a floating-point tensor of shape (..., {dim}), got {kind}")
    if y.dim() == 0 or y.shape[-1] != dim:
        raise ValueError(
            f"{name} must have shape (..., {dim}), got {tuple(y.shape)}; its last dimension must be {dim}"
        )


class ICNN(nn.Module):
    """An input-convex neural network :math:`f: \\mathbb R^{dim} \\to \\mathbb R` (Amos, Xu and Kolter, 2017).

    .. math::

        h_1 = \\sigma(W_0 y + b_0), \\qquad
        h_{i+1} = \\sigma(W^h_i h_i + W^y_i y + b_i), \\qquad
        f(y) = w_{out}^\\top h_L + w^y_{out}{}^\\top y,

    with :math:`W^h_i = \\mathrm{softplus}(R_i) \\ge 0` and :math:`w_{out} = \\mathrm{softplus}(r_{out}) \\ge 0`
    elementwise (a smooth reparameterisation of raw weights ``raw_hidden_weights``, ``raw_output_weight``)
    and :math:`\\sigma` convex and non-decreasing. Each :math:`h_i` is then a convex function of :math:`y`
    (a non-negative combination of convex functions plus an affine one, passed through a convex
    non-decreasing map), and so is :math:`f`. The output has no bias: it would not change :math:`\\nabla f`.

    ``activation="softplus"`` (default) makes :math:`f` smooth; ``"leaky_relu"`` (slope 0.01) makes it
    piecewise linear, so :math:`\\nabla f` is piecewise constant and its biases get zero gradients almost
    everywhere.

    Arguments:
        dim: Input dimension.
        hidden: Widths of the hidden layers ``h_1 .. h_L`` (``L >= 1``).
        activation: ``"softplus"`` or ``"leaky_relu"``.

    Returns:
        ``forward(y)`` maps ``(..., dim)`` to ``(...,)``, row by row.

    References:
        | Input Convex Neural Networks (Amos, Xu and Kolter, 2017)
        | https://arxiv.org/abs/1609.07152
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (50, 50), activation: str = "softplus") -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.hidden = _check_hidden(hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        # W^y_i y + b_i for every layer (i = 0 is the first layer W_0 y + b_0).
        self.input_layers = nn.ModuleList(nn.Linear(dim, h) for h in self.hidden)
        self.raw_hidden_weights = nn.ParameterList(
            nn.Parameter(torch.empty(h_out, h_in)) for h_in, h_out in zip(self.hidden[:-1], self.hidden[1:])
        )
        self.raw_output_weight = nn.Parameter(torch.empty(self.hidden[-1]))
        self.output_linear = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Non-negative weights start at ``softplus(R) ~ Uniform(0.2, 1.8) / fan_in`` (mean ``1 / fan_in``).

        This keeps each layer's pre-activation on the scale of its input; the usual
        ``±1/sqrt(fan_in)`` init of a sum of non-negative terms would grow with the width.
        """
        for layer in self.input_layers:
            layer.reset_parameters()
        with torch.no_grad():
            for raw in [*self.raw_hidden_weights, self.raw_output_weight]:
                fan_in = raw.shape[-1]
                w = torch.empty_like(raw).uniform_(0.2, 1.8) / fan_in
                raw.copy_(_inverse_softplus(w))
            bound = 1.0 / math.sqrt(self.dim)
            self.output_linear.uniform_(-bound, bound)

    def _sigma(self, a: Tensor) -> Tensor:
        return F.softplus(a) if self.activation == "softplus" else F.leaky_relu(a, 0.01)

    def hidden_weights(self) -> list[Tensor]:
        """The non-negative hidden-to-hidden weights :math:`W^h_i = \\mathrm{softplus}(R_i)`."""
        return [F.softplus(raw) for raw in self.raw_hidden_weights]

    def output_weight(self) -> Tensor:
        """The non-negative output weight :math:`w_{out} = \\mathrm{softplus}(r_{out})`."""
        return F.softplus(self.raw_output_weight)

    def forward(self, y: Tensor) -> Tensor:
        check_input("y", y, self.dim)
        h = self._sigma(self.input_layers[0](y))
        for layer, w_h in zip(self.input_layers[1:], self.hidden_weights()):
            h = self._sigma(h @ w_h.T + layer(y))
        return h @ self.output_weight() + y @ self.output_linear


def potential_gradient(potential: nn.Module, y: Tensor) -> Tensor:
    """:math:`\\nabla_y f(y)` by autograd, for a potential acting row by row on ``(..., dim)``.

    With gradients enabled the result keeps its graph (``create_graph=True``), so a loss of it
    back-propagates to the potential's parameters and to ``y``. Under ``torch.no_grad()`` (or
    ``torch.inference_mode()``) gradients are enabled locally and a detached tensor is returned.
    Rows must not interact (no batch normalisation): the gradient of ``f(y).sum()`` is then the
    row-wise gradient.
    """
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return potential_gradient(potential, y.clone()).detach()
    if not torch.is_grad_enabled():
        with torch.enable_grad():
            x = y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(potential(x).sum(), x)
        return grad.detach()
    create_graph = y.requires_grad or any(p.requires_grad for p in potential.parameters())
    x = y if y.requires_grad else y.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(potential(x).sum(), x, create_graph=create_graph)
    return grad


class BrenierMap(nn.Module):
    """A strictly monotone map :math:`g(y) = \\nabla_y f(y) + c\\,y` with :math:`f` an :class:`ICNN`.

    :math:`g` is the gradient of the :math:`c`-strongly convex potential :math:`f(y) + \\tfrac c2 \\|y\\|^2`
    (a Brenier map), so for all :math:`a, b`

    .. math::

        \\langle g(a) - g(b),\\, a - b \\rangle \\;\\ge\\; c\\,\\|a - b\\|^2,
        \\qquad\\text{hence}\\qquad \\|g(a) - g(b)\\| \\ge c\\,\\|a - b\\|

    (Cauchy-Schwarz): :math:`g` is injective, with an inverse that is :math:`1/c`-Lipschitz on its image.
    The gradient is taken by autograd (see :func:`potential_gradient`), so the map trains with any
    Pyro loss and also runs under ``torch.no_grad()``.

    Arguments:
        dim: Input and output dimension.
        hidden: Hidden widths of the ICNN.
        strength: :math:`c > 0`, the strong-monotonicity constant.
        activation: The ICNN's activation, ``"softplus"`` or ``"leaky_relu"``.

    References:
        | Posterior Collapse and Latent Variable Non-identifiability (Wang, Blei and Cunningham, 2021)
        | https://arxiv.org/abs/2301.00537
    """

    def __init__(
        self, dim: int, hidden: Sequence[int] = (50, 50), strength: float = 0.1, activation: str = "softplus"
    ) -> None:
        super().__init__()
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise TypeError(f"strength must be a positive float, got {type(strength).__name__}")
        if not math.isfinite(strength) or strength <= 0:
            raise ValueError(f"strength (c) must be a positive finite number, got {strength}")
        self.potential = ICNN(dim, hidden, activation)
        self.dim = self.potential.dim
        self.strength = float(strength)

    def forward(self, y: Tensor) -> Tensor:
        check_input("y", y, self.dim)
        return potential_gradient(self.potential, y) + self.strength * y

    def extra_repr(self) -> str:
        return f"dim={self.dim}, strength={self.strength}"
