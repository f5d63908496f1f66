"""β-VAE's loss (Higgins et al. 2017), a baseline of the LiBI paper: ``Trace_ELBO`` with the latent site scaled by β."""

from __future__ import annotations

from pyro.infer import Trace_ELBO

from ._pyro_compat import Messenger

__all__ = ["TraceBetaELBO"]


class _ScaleSite(Messenger):
    """Multiplies one sample site's log-density by ``scale`` (``poutine.scale`` restricted to that site)."""

    def __init__(self, site: str, scale: float) -> None:
        super().__init__()
        self.site, self.scale = site, scale

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] == self.site:
            msg["scale"] = msg["scale"] * self.scale


class TraceBetaELBO(Trace_ELBO):
    """β-VAE's loss: ``Trace_ELBO`` with the latent site ``z`` scaled by ``beta`` in model and guide.

    Per point, :math:`-\\mathbb E_q[\\log p(x \\mid z)] + \\beta\\, \\mathbb E_q[\\log q(z \\mid x) - \\log p(z)]`
    (the single-sample KL estimate scaled by β); ``beta = 1`` is ``Trace_ELBO`` exactly. ``beta`` may be
    changed between steps (the annealed β-VAE does).
    """

    def __init__(self, beta: float = 1.0, site: str = "z", **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta, self.site = beta, site

    def _scaled(self, fn):
        return _ScaleSite(self.site, self.beta)(fn)

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(self._scaled(model), self._scaled(guide), *args, **kwargs)
