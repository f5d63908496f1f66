"""Pyro objectives and guides: MAPA's bound and guide, our minibatch-safe IWAE, InfoVAE,
and the Hamiltonian VAE guide.

Every objective is a :class:`pyro.infer.ELBO` (``loss``, ``loss_and_grads``,
``differentiable_loss``), so it swaps into :class:`pyro.infer.SVI` with one argument.
:mod:`._pyro_compat` is the only module that touches Pyro internals.
"""

from .empiricalize import EmpiricalizedPyroModel, empiricalize
from .force_index import ForceIndexMessenger, force_index, mapa_index_values
from .hamiltonian_guide import HamiltonianGuide, leapfrog_flow, tempering_schedule
from .infovae_elbo import TraceInfoVAE_ELBO, imq_kernel, mmd_u_statistic, rbf_kernel
from .iwae_elbo import TraceIWAE_ELBO
from .mapa_elbo import TraceMAPA_ELBO
from .mapa_guide import MAPAGuide

__all__ = [
    "EmpiricalizedPyroModel",
    "ForceIndexMessenger",
    "HamiltonianGuide",
    "MAPAGuide",
    "TraceIWAE_ELBO",
    "TraceInfoVAE_ELBO",
    "TraceMAPA_ELBO",
    "empiricalize",
    "force_index",
    "imq_kernel",
    "leapfrog_flow",
    "mapa_index_values",
    "mmd_u_statistic",
    "rbf_kernel",
    "tempering_schedule",
]
