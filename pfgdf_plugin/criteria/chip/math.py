"""CHIP: a channel's importance is how independent its feature map is of the other channels' maps.

For one sample, let ``A`` be a ``C x N`` feature map (``N`` = spatial positions, or tokens). The channel
independence of channel ``c`` is ``CI_c = ||A||_* - ||A with row c set to zero||_*`` (nuclear norms), and a
channel's score is the mean of ``CI_c`` over calibration samples: low CI = the channel is nearly a combination
of the others = pruned first (CHIP, NeurIPS 2021).

The reference algorithm takes one SVD per channel per sample. `channel_independence` is exact and takes
one symmetric eigendecomposition per sample instead (the method, with its error bound, is written out in
``docs/chip.md``):

1. Spectrum. ``G = A A^T = Q diag(lam) Q^T`` from the smaller Gram side (``A^T A`` when ``C > N``, with
   ``Q[:, k] = A v_k / sqrt(lam_k)``), in float64. Eigenvalues below ``1e-8 * lam_max`` are beyond what a Gram
   matrix resolves, so that block is recomputed from ``A`` itself (one small SVD, Rayleigh-Ritz); singular values
   then at rounding level are exact zeros, and their share of each row of ``Q`` is ``w0_c = 1 - sum_k Q[c,k]^2``.
2. All channels at once. With ``w = Q[c,:]^2``, ``R(t) = w0/t + sum_k w_k/(lam_k+t)`` and
   ``P(t) = sum_k w_k lam_k/(lam_k+t)^2``, deleting row ``c`` changes ``tr(G (G+t)^-1)`` by ``h(t) = P(t)/R(t)``,
   and ``CI_c = (2/pi) * Integral_0^inf h(s^2) ds``. The integrand is positive (no cancellation). A rational
   ``phi(t) = M1 t / ((t+p)(t+q))`` with the same behaviour at both ends (``M1 = G_cc``, ``p q = M1 w0 / sum_k
   w_k/lam_k``) is integrated in closed form; the rest decays like ``s^{+-3}`` and is integrated by the
   trapezoidal rule in ``u = log s`` (step 0.3) from ``10^-3.5`` times the smallest singular value to ``10^3.5``
   times the largest. The integrand is analytic in the strip ``|Im u| < pi/2``, which bounds the rule's error;
   the per-channel bound (discretisation + both truncated tails) is returned on request, ~1e-10 relative.

Examples:
    >>> import torch
    >>> maps = torch.rand(2, 16, 64)                     # 2 samples, 16 channels, 8x8 positions
    >>> ci = channel_independence(maps)
    >>> tuple(ci.shape), ci.dtype
    ((2, 16), torch.float64)
    >>> a = maps[0].double(); b = a.clone(); b[3] = 0    # the definition, for channel 3 of sample 0
    >>> ref = torch.linalg.svdvals(a).sum() - torch.linalg.svdvals(b).sum()
    >>> bool(torch.isclose(ci[0, 3], ref, rtol=1e-9))
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

_EPS = torch.finfo(torch.float64).eps
# Eigenvalues of a float64 Gram matrix below this fraction of the largest carry absolute errors comparable to
# themselves (they are squares of singular values); that block is recomputed from the map by an SVD.
_REFINE_BELOW = 1e-8
# Singular values below (this * max(C, N) * eps) of the largest are rounding noise: exact zeros.
_ZERO_FACTOR = 8.0
# Trapezoidal step in u = log(s) and the margin of the grid beyond the spectrum on each side: together they
# bound the quadrature error by about 5e-10 relative in the worst case (1e-13 to 1e-12 measured).
_STEP = 0.3
_MARGIN = math.log(10**3.5)
# The smallest scale the grid reaches below the largest singular value (channels weaker than this have CI
# below 1e-14 of the largest singular value, and their error bound says so).
_FLOOR = 1e-14


def _trapezoid_constant(step: float) -> float:
    """``min_a 2 / (cos(a)^3 (exp(2 pi a / step) - 1))`` over ``0 < a < pi/2``: the relative discretisation bound.

    On the line ``Im u = a`` the integrand is at most ``1/cos(a)^3`` times its value on the real line, and the
    trapezoidal rule's error for a function analytic in the strip ``|Im u| < a`` is at most
    ``2 M / (exp(2 pi a / step) - 1)`` (Trefethen and Weideman, SIAM Review 2014, Thm 5.1).
    """
    best = math.inf
    for i in range(1, 4000):
        a = (math.pi / 2) * i / 4000
        best = min(best, 2.0 / (math.cos(a) ** 3 * math.expm1(2 * math.pi * a / step)))
    return best


_KAPPA = _trapezoid_constant(_STEP)
# Sum of h * e^{-k j h} for j >= 1, times 2/pi: turns a tail bound K e^{-k|u|} at the last node into a bound on
# the sum over all the nodes that were not taken (k = 3, 5).
_TAIL = (2 / math.pi) * _STEP * math.exp(-3 * _STEP) / -math.expm1(-3 * _STEP)
_TAIL5 = (2 / math.pi) * _STEP * math.exp(-5 * _STEP) / -math.expm1(-5 * _STEP)


def channel_independence(
    maps: torch.Tensor, *, chunk_bytes: int = 1 << 26, return_error_bound: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact ``CI_c = ||A||_* - ||A with row c zeroed||_*`` for every channel of every sample.

    Args:
        maps: ``[C, N]`` (one sample) or ``[B, C, N]`` feature maps, any float dtype and device; computed in
            float64 on that device.
        chunk_bytes: samples are processed in chunks whose float64 working set stays about this size.
        return_error_bound: also return a per-channel upper bound on the quadrature error (absolute, same
            units as CI). It bounds the integration of the computed spectrum, not floating-point rounding.

    Returns:
        float64 CI of shape ``[C]`` or ``[B, C]`` (and the bound, same shape). An all-zero row has CI 0.

    Raises:
        ValueError: for a tensor that is not 2-D or 3-D, is empty, or holds NaN or Inf.

    Examples:
        >>> import torch
        >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])   # rows 0 and 2 are copies, row 1 is alone
        >>> channel_independence(a).round(decimals=6).tolist()      # sqrt(2) - 1, 2, sqrt(2) - 1
        [0.414214, 2.0, 0.414214]
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim not in (2, 3) or not maps.is_floating_point():
        what = f"a {maps.ndim}-D {maps.dtype} tensor" if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a float tensor [C, N] or [B, C, N], got {what}")
    single = maps.ndim == 2
    a = maps.unsqueeze(0) if single else maps
    if a.numel() == 0:
        raise ValueError(f"maps must not be empty, got shape {tuple(maps.shape)}")
    try:
        parts = list(chunked_ci(a, chunk_bytes))
    except NonFiniteMaps:
        raise ValueError("maps contain NaN or Inf values (or values whose squares overflow float64)") from None
    ci = torch.cat([p[0] for p in parts])
    bound = torch.cat([p[1] for p in parts])
    if single:
        ci, bound = ci[0], bound[0]
    return (ci, bound) if return_error_bound else ci


class NonFiniteMaps(Exception):
    """A map holds NaN or Inf (detected from the rows' squared norms, which every entry reaches).

    Raised by `chunked_ci`; callers turn it into a `ValueError` that names the map.
    """


def chunked_ci(a: torch.Tensor, chunk_bytes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """CI, its error bound and the rows' squared norms, chunk by chunk of samples.

    Each chunk is converted to float64 on its own, so the working set stays near ``chunk_bytes`` however large
    the batch.

    Args:
        a: ``[B, C, N]`` feature maps, any float dtype and device.
        chunk_bytes: target float64 working-set size of one chunk.

    Returns:
        An iterator of ``(ci, bound, energy)``, each float64 ``[b, C]`` for the chunk's ``b`` samples, in order.

    Raises:
        NonFiniteMaps: a chunk holds NaN or Inf (raised while iterating).

    Examples:
        >>> import torch
        >>> parts = list(chunked_ci(torch.rand(3, 4, 9), chunk_bytes=1))   # one sample per chunk
        >>> [tuple(ci.shape) for ci, _, _ in parts]
        [(1, 4), (1, 4), (1, 4)]
    """
    b, c, n = a.shape
    r = min(c, n)
    # float64 copy, Gram and eigenvectors, eigenvector weights, and the [C, nodes] quadrature terms (~160 nodes)
    per_sample = 8 * (c * n + 3 * r * r + 2 * c * r + 4 * c * 160)
    step = max(1, chunk_bytes // per_sample)
    for start in range(0, b, step):
        yield _ci_chunk(a[start : start + step].to(torch.float64))


def _spectrum(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lam [b, r], w [b, C, r], w0 [b, C], energy [b, C])``: eigenvalues of ``A A^T`` (exact zeros as 0,
    with zero weight), each row's squared eigenvector entries, the row's mass ``w0`` on the zero eigenvalue,
    and the row's squared norm."""
    _, c, n = a.shape
    wide = c <= n
    gram = a @ a.transpose(1, 2) if wide else a.transpose(1, 2) @ a
    # (float64 .square() is slow on some CPU builds; products are not)
    energy = gram.diagonal(dim1=1, dim2=2).clone() if wide else (a * a).sum(-1)
    if not torch.isfinite(energy).all():  # a NaN or Inf anywhere in a row reaches that row's squared norm
        raise NonFiniteMaps
    lam, vec = torch.linalg.eigh(gram)  # ascending
    lam_max = lam[:, -1:].clamp(min=0.0)
    if not wide:
        vec = a @ vec  # column k = sigma_k u_k
    k = int((lam < _REFINE_BELOW * lam_max).sum(-1).max())
    sigma = lam.clamp_(min=0.0).sqrt_()
    if k:
        # Rayleigh-Ritz on A itself for the k smallest: singular values to eps * sigma_max, not sqrt(eps).
        block = (a.transpose(1, 2) @ vec[:, :, :k]) if wide else vec[:, :, :k]
        u_b, s_b, vh_b = torch.linalg.svd(block, full_matrices=False)
        sigma[:, :k] = s_b
        vec[:, :, :k] = (vec[:, :, :k] @ vh_b.transpose(1, 2)) if wide else u_b * s_b.unsqueeze(1)
    zero = sigma <= _ZERO_FACTOR * max(c, n) * _EPS * sigma.amax(-1, keepdim=True)
    lam = sigma.mul_(sigma).masked_fill_(zero, 0.0)
    # Wide: w = Q^2. Tall: Q[:, k] = A v_k / sigma_k, so w = (A v_k)^2 / lam_k (the refined block is stored
    # as u * sigma to share the formula).
    w = vec.mul_(vec) if wide else vec.mul_(vec).div_(lam.masked_fill(zero, 1.0).unsqueeze(1))
    if bool(zero.any()):
        w0 = (w @ zero.to(w.dtype).unsqueeze(-1)).squeeze(-1) if wide else None
        w.masked_fill_(zero.unsqueeze(1), 0.0)
    else:
        w0 = torch.zeros_like(energy) if wide else None
    if w0 is None:  # the zero eigenvalue's share is what the nonzero ones leave
        w0 = (1.0 - w.sum(-1)).clamp_(0.0, 1.0)
    return lam, w, w0, energy


def _ci_chunk(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CI, its quadrature error bound and the rows' squared norms for a float64 chunk ``[b, C, N]``."""
    lam, w, w0, energy = _spectrum(a)
    nonzero = lam > 0
    inv = torch.where(nonzero, 1.0 / lam.masked_fill(~nonzero, 1.0), 0.0)
    m = (w @ inv.unsqueeze(-1)).squeeze(-1)  # sum_k w_k / lam_k  (= P(0) = R(0) without w0)
    m1 = (w @ lam.unsqueeze(-1)).squeeze(-1)  # sum_k w_k lam_k    (= G_cc in the model)
    live = (m > 0) & (energy > 0)
    beta = torch.where(live, w0 / m.masked_fill(~live, 1.0), 0.0)
    # phi(t) = M1 t / ((t + p)(t + q)) with p q = M1 beta, p + q = a: phi ~ t/beta as t -> 0 (w0 > 0) or
    # phi -> 1 (w0 = 0), and phi = M1/t - a M1/t^2 + ... as t -> oo. With a = M1 + beta the roots are M1 and
    # beta; when beta > 4 M1 (rows almost wholly on the zero eigenvalue) a = M1 + 2 sqrt(M1 beta) <= 3 lam_max
    # keeps the second-order term on the scale of the spectrum. Integral: (2/pi) int phi(s^2) ds = M1/(rp + rq).
    root = (m1 * beta).sqrt()
    wide_beta = beta > 4 * m1
    a_sum = m1 + torch.where(wide_beta, 2 * root, beta)
    closed = torch.where(live, m1 / (a_sum + 2 * root).sqrt(), 0.0)

    lam_max = lam.amax(-1)
    lam_min = torch.where(nonzero, lam, torch.inf).amin(-1)
    s_max = lam_max.sqrt()
    s_min = torch.maximum(lam_min.sqrt(), _FLOOR * s_max)
    empty = ~(s_max > 0)
    s_max, s_min = s_max.masked_fill(empty, 1.0), s_min.masked_fill(empty, 1.0)
    u_lo = s_min.log() - _MARGIN
    nodes = int(torch.ceil(((s_max.log() + _MARGIN) - u_lo).max() / _STEP)) + 1
    u = u_lo.unsqueeze(-1) + _STEP * torch.arange(nodes, dtype=a.dtype, device=a.device)  # [b, J]
    t = (2 * u).exp().unsqueeze(1)  # [b, 1, J]
    d1 = (lam.unsqueeze(-1) + t).reciprocal_()  # [b, r, J]
    d1t = d1 * t
    d2 = d1.mul_(d1).mul_(lam.unsqueeze(-1))  # lam / (lam + t)^2, in d1's storage
    # h(t) = t P / (w0 + t R) and the weight e^u of the log variable give e^{3u} P / (w0 + t R).
    q = torch.bmm(w, d2).div_(torch.baddbmm(w0.unsqueeze(-1), w, d1t))
    del d1, d1t, d2
    phi = (t * t + (m1 * beta).unsqueeze(-1)).addcmul_(t, a_sum.unsqueeze(-1))  # (t + p)(t + q)
    q.sub_(phi.reciprocal_().mul_(m1.unsqueeze(-1)))  # minus phi(t) / t
    ci = closed + (2 / math.pi) * _STEP * torch.bmm(q, (3 * u).exp().unsqueeze(-1)).squeeze(-1)
    ci = torch.where(live, ci, 0.0).clamp(min=0.0)

    # Tails (docs/chip.md): |g| <= M1 (4 lam_max + a) / t^2 for t >= lam_max. For t <= lam_min,
    # |g| <= t (2/lam_min + 1/M1) when a = M1 + beta, and |g| <= t^2 (2/(lam_min beta) + (lam_min +
    # 2 sqrt(M1 beta)) / (M1 beta^2)) in the wide case. In u these are K e^{-3u}, K e^{3u} and K e^{5u},
    # summed over the nodes beyond each end of the grid.
    lo_t = lam_min.unsqueeze(-1)
    k_hi = m1 * (4 * lam_max.unsqueeze(-1) + a_sum)
    m1_safe, beta_safe = m1.masked_fill(~live, 1.0), beta.masked_fill(~(live & wide_beta), 1.0)
    k_lo = 2 / lo_t + 1 / m1_safe
    k_lo2 = 2 / (lo_t * beta_safe) + (lo_t + 2 * root) / (m1_safe * beta_safe * beta_safe)
    u0 = u[:, :1]
    left = torch.where(wide_beta, _TAIL5 * k_lo2 * (5 * u0).exp(), _TAIL * k_lo * (3 * u0).exp())
    bound = _KAPPA * (ci + closed) + _TAIL * k_hi * (-3 * u[:, -1:]).exp() + left
    return ci, torch.where(live, bound, 0.0), energy
