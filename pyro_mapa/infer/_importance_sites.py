"""Which sites of a (model, guide) trace pair are per point or global, and the log-weights they give.

Shared plumbing of the importance-weighted objectives: :func:`importance_terms` is the site loop
of ``TraceIWAE_ELBO``; :class:`PlateScale` (the data plate's one scale) and :class:`PointSums`
(per-point sums) are shared with the site loop of ``TraceMAPA_ELBO``; both reduce their terms in
:class:`~._importance_elbo.PerPointImportanceELBO`. The rules, in terms of the *data plate* (a
plate whose entries, the "points", are conditionally independent given the global sites):

- a latent site inside the data plate is *local*: its ``log p - log q`` joins its point's
  log-weight, one per (particle, point); every other plate around it is summed within the point;
- a latent site outside the data plate is *global*: :class:`ShareGlobals` draws it once per step
  from the guide, shared by every particle, and its ``log p - log q`` is counted once;
- an observed site outside the data plate is counted once (its mean over particles);
- with no data plate (``plate=None``) every site joins one whole-trace log-weight per particle.

The data plate may be a vectorized plate (points along its dim) or a Python-loop plate (one
point per iteration, told apart by the frame's ``counter``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._pyro_compat import VECTORIZED_PARTICLE_PLATE, Messenger, detach_distribution, scale_and_mask, site_is_subsample
from ._tracing import plate_frame, reduce_to_particle_point, same_scale, scalar_scale, site_log_prob

__all__ = [
    "ImportanceTerms",
    "PlateScale",
    "PointSums",
    "ShareGlobals",
    "detect_data_plate",
    "importance_terms",
]

_FIX_REPARAM = (
    "TraceIWAE_ELBO needs reparameterized guide sites: use Trace_ELBO or TraceGraph_ELBO for this "
    "guide, or give the site a reparameterized distribution (has_rsample=True, e.g. Normal, or a "
    "relaxed Bernoulli/Categorical for a discrete latent)"
)


def _frames(site: dict) -> list:
    return [f for f in site["cond_indep_stack"] if f.name != VECTORIZED_PARTICLE_PLATE]


def _latent_guide_sites(guide_trace) -> list[tuple[str, dict]]:
    return [
        (name, site)
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def check_reparameterized(guide_trace) -> None:
    """Raises ``ValueError`` naming the first latent guide site that cannot be reparameterized."""
    for name, site in _latent_guide_sites(guide_trace):
        if not getattr(site["fn"], "has_rsample", False):
            kind = type(site["fn"]).__name__
            raise ValueError(f"guide site {name!r} ({kind}) is not reparameterizable; {_FIX_REPARAM}")


def detect_data_plate(guide_trace) -> str | None:
    """The data plate: the outermost plate of the guide's latent sites (``None``: no latent in a plate).

    Every latent site inside some plate must have the same outermost plate, else the choice is
    ambiguous and a ``ValueError`` asks for ``plate=`` (unless a site is not reparameterizable:
    :func:`importance_terms` then refuses that first). Latent sites outside every plate do not
    take part (they are globals).
    """
    outermost: dict[str, str] = {}
    for name, site in _latent_guide_sites(guide_trace):
        frames = _frames(site)
        if frames:
            outermost.setdefault(frames[0].name, name)
    if len(outermost) > 1 and all(getattr(s["fn"], "has_rsample", False) for _, s in _latent_guide_sites(guide_trace)):
        listed = ", ".join(f"{plate!r} (site {site!r})" for plate, site in outermost.items())
        raise ValueError(
            f"the guide's latent sites sit in different outermost plates: {listed}; pass "
            "TraceIWAE_ELBO(plate=<name of the data plate>): latent sites outside it are then "
            "drawn once per step as globals"
        )
    return next(iter(outermost), None)


class ShareGlobals(Messenger):
    """Draws every latent sample site outside plate ``plate`` once, shared by all particles.

    Must be entered inside the particle plate (it wraps the guide): it runs after the guide's own
    plates have broadcast the site's distribution and before the particle plate does, so the value
    it draws has no particle dim and broadcasts against every particle.
    """

    def __init__(self, plate: str | None) -> None:
        super().__init__()
        self.plate = plate  # None: share only the sites outside every plate (before the plate is known)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg.get("done", False):
            return
        if self.plate is None and msg["cond_indep_stack"]:
            return  # plate not known yet: only sites outside every plate are shared
        if any(f.name == self.plate for f in msg["cond_indep_stack"]):
            return
        msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"])


class ImportanceTerms(NamedTuple):
    """Per-point log-weights ``(P, B)`` (``None`` without local sites), their scale, the globals."""

    log_w: Tensor | None
    log_w_dq: Tensor | None
    scale: Any
    global_lp: Tensor | float
    global_values: list[Tensor]


def _scaled(lp: Tensor, site: dict) -> Tensor:
    scale = site["scale"]
    return lp * scale if isinstance(scale, Tensor) or scale != 1.0 else lp


def _subsampled_others(site: dict, plate: str | None) -> list[str]:
    return [
        f"{f.name!r} ({f.size} of {f.full_size})"
        for f in _frames(site)
        if f.name != plate and f.full_size is not None and f.size != f.full_size
    ]


def _reduce(name: str, lp: Tensor, particle_dim: int, point_dim: int | None, shape: tuple) -> Tensor:
    """:func:`reduce_to_particle_point`, refusing a log-prob with batch dims left of the particle dim."""
    extra = lp.shape[: max(lp.dim() + particle_dim, 0)]
    if any(size != 1 for size in extra):
        raise ValueError(
            f"site {name!r} has a log_prob of shape {tuple(lp.shape)}, with batch dims left of the particle "
            f"dim ({particle_dim}): some batch dim is not declared by a plate (e.g. an event dim of a global "
            "used as a batch dim); declare it with pyro.plate, or use num_particles=1"
        )
    return reduce_to_particle_point(lp, particle_dim, point_dim, shape)


def _detached_log_q(site: dict, scale) -> Tensor:
    """``log q`` of a guide site with the distribution's parameters detached (DReG), masked and scaled."""
    return scale_and_mask(detach_distribution(site["fn"]).log_prob(site["value"]), scale, site["mask"])


class PlateScale:
    """The one scale of the data plate's sites (``N/|B|`` under subsampling), checked site by site.

    A per-point bound multiplies each point's logsumexp by it, so every site of a point must
    carry the same scale.

    Arguments:
        plate: The data plate's name.
        why: The end of the error's message: why one scale (and what to do otherwise).
    """

    def __init__(self, plate: str | None, why: str) -> None:
        self.plate = plate
        self.why = why
        self.first: Any = None

    def check(self, name: str, scale: Any) -> None:
        """Records the first site's scale; ``ValueError`` if site ``name``'s ``scale`` differs from it."""
        if self.first is None:
            self.first = scale
        elif not same_scale(scale, self.first):
            raise ValueError(
                f"all sites in plate {self.plate!r} must share one scale (site {name!r} differs){self.why}"
            )

    @property
    def value(self) -> Any:
        """The scale (``1.0`` when no site was checked)."""
        return 1.0 if self.first is None else self.first


class PointSums:
    """Sums per-point terms, keyed by point (``None``: vectorized, else a loop iteration's counter)."""

    def __init__(self) -> None:
        self.vectorized: list[Tensor] = []
        self.loop: dict[int, Tensor] = {}

    def add(self, key, term: Tensor) -> None:
        if key is None:
            self.vectorized.append(term)
        else:
            self.loop[key] = term if key not in self.loop else self.loop[key] + term

    def total(self) -> Tensor | None:
        if self.loop:
            return torch.stack(list(self.loop.values()), dim=-1)
        return sum(self.vectorized[1:], self.vectorized[0]) if self.vectorized else None


def importance_terms(
    model_trace, guide_trace, plate: str | None, num_particles: int, particle_dim: int, detach_guide_params: bool
) -> ImportanceTerms:
    """Collects each site's ``log p`` and ``-log q`` into per-point, whole-trace or global terms.

    Arguments:
        model_trace: The model replayed against the guide (log-probs computed).
        guide_trace: The guide's trace, globals drawn by :class:`ShareGlobals` when ``plate`` is set.
        plate: The data plate, or ``None`` for one whole-trace log-weight per particle.
        num_particles: ``P``.
        particle_dim: Negative dim of the particle plate (absent when ``P = 1``).
        detach_guide_params: Also return the log-weights with the guide's parameters detached
            inside ``log q`` (DReG).

    Raises:
        ValueError: a latent site missing from the guide or not reparameterizable; a site that is
            in the data plate in the model but not in the guide; sites of the data plate with
            different or non-scalar scales; with ``P > 1``, another subsampled plate inside a
            point, or (``plate=None``) any subsampled plate.
    """
    p = num_particles
    acc, acc_dq = PointSums(), PointSums()
    global_lp: Tensor | float = 0.0
    global_values: list[Tensor] = []
    plate_scale = PlateScale(
        plate,
        ": with more than one particle the scale multiplies each point's log-mean-exp; use num_particles=1 for "
        "per-site scales",
    )
    check_reparameterized(guide_trace)
    # With no data plate and no latent site, log p(x) is the same for every particle: counted once.
    whole_trace = plate is None and bool(_latent_guide_sites(guide_trace))
    names = [n for n, s in model_trace.nodes.items() if s["type"] == "sample"]
    names += [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n not in model_trace.nodes]
    for name in names:
        m_site = model_trace.nodes.get(name)
        g_site = guide_trace.nodes.get(name)
        latent = g_site is not None and not g_site["is_observed"]
        if m_site is not None and not m_site["is_observed"] and not latent:
            raise ValueError(
                f"model site {name!r} is latent but the guide has no sample site {name!r}; "
                "add it to the guide (or observe it in the model)"
            )
        parts = []  # (site, sign, detachable)
        if m_site is not None:
            parts.append((m_site, 1.0, False))
        if g_site is not None and (latent or m_site is None):
            parts.append((g_site, -1.0, latent))
        ref = g_site if latent else m_site
        frame = plate_frame(ref, plate) if plate is not None else None
        if plate is not None and latent and m_site is not None and (plate_frame(m_site, plate) is None) != (frame is None):
            raise ValueError(
                f"site {name!r} is inside plate {plate!r} in only one of the model and the guide; "
                "put it in the same plates in both"
            )
        if p > 1 and (frame is not None or whole_trace) and _subsampled_others(ref, plate):
            where = f"inside a point of the data plate {plate!r}" if plate is not None else "with no data plate"
            raise ValueError(
                f"site {name!r} is in the subsampled plate(s) {', '.join(_subsampled_others(ref, plate))} "
                f"{where}: an importance-weighted bound with more than one particle needs every subsampled "
                "plate of a point to be the data plate; use the full plate (no subsample_size), "
                "TraceIWAE_ELBO(plate=<the subsampled plate>) if its points are independent, "
                "or num_particles=1 (the ELBO)"
            )
        if frame is None:
            # Global (drawn once by ShareGlobals), observed outside the data plate, or whole-trace.
            for site, sign, detachable in parts:
                lp = _reduce(name, _scaled(site_log_prob(site), site), particle_dim, None, (p,))
                if whole_trace:
                    acc.add(None, sign * lp.unsqueeze(-1))
                    if detachable and detach_guide_params:
                        lp = _reduce(name, _detached_log_q(site, site["scale"]), particle_dim, None, (p,))
                    acc_dq.add(None, sign * lp.unsqueeze(-1))
                else:
                    global_lp = global_lp + sign * lp.mean()
            if plate is not None and latent:
                global_values.append(g_site["value"])
            continue
        scale = scalar_scale(ref)
        inside = p == 1  # one particle: the log-mean-exp is the identity, each site's scale goes inside
        if not inside:
            if isinstance(scale, Tensor):
                raise ValueError(
                    f"site {name!r} in the data plate {plate!r} has a scale of shape {tuple(scale.shape)}; "
                    "a per-point bound needs one number (e.g. poutine.scale(scale=0.5)), or num_particles=1"
                )
            plate_scale.check(name, scale)
        key = None if frame.dim is not None else frame.counter
        shape = (p, frame.size) if frame.dim is not None else (p,)
        for site, sign, detachable in parts:
            f = plate_frame(site, plate)
            lp = _scaled(site_log_prob(site), site) if inside else site_log_prob(site)
            lp = _reduce(name, lp, particle_dim, f.dim, shape)
            acc.add(key, sign * lp)
            if detachable and detach_guide_params:
                lp = _detached_log_q(site, site["scale"] if inside else 1.0)
                lp = _reduce(name, lp, particle_dim, f.dim, shape)
            acc_dq.add(key, sign * lp)
    return ImportanceTerms(acc.total(), acc_dq.total(), plate_scale.value, global_lp, global_values)
