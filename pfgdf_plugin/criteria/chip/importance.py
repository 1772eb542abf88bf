"""CHIP: a channel's importance is how independent its feature map is of the other channels' maps.

For one sample, let ``A`` be a ``C x N`` feature map (``N`` = spatial positions, or tokens). The channel
independence of channel ``c`` is ``CI_c = ||A||_* - ||A with row c set to zero||_*`` (nuclear norms), and a
channel's score is the mean of ``CI_c`` over calibration samples: low CI = the channel is nearly a combination
of the others = pruned first (CHIP, NeurIPS 2021).

The reference algorithm takes one SVD per channel per sample. :func:`channel_independence` is exact and takes
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

Example:
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

import contextlib
import hashlib
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import graph_of, module_name
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.criteria.channels import (
    REDUCTIONS,
    ChannelSlice,
    Reduction,
    channel_slices,
    reduce_to_group,
)
from pfgdf_plugin.models.layers import NORM_TYPES, WEIGHTED_TYPES, is_depthwise

Feature = Literal["output", "input", "norm"]
FEATURES: tuple[str, ...] = ("output", "input", "norm")
"""Which tensor carries a group's channels. ``output``: the raw output of the layers producing the channels.
``input``: what the layers consuming the channels read (the post-activation map in conv-norm-act chains, the
post-add map in residual stages). ``norm``: the output of the group's norm layers."""

Normalization = Literal["mean", "rms", "none"]
NORMALIZATIONS: tuple[str, ...] = ("mean", "rms", "none")

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

    Example:
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
        parts = list(_chunks(a, chunk_bytes))
    except _NonFinite:
        raise ValueError("maps contain NaN or Inf values (or values whose squares overflow float64)") from None
    ci = torch.cat([p[0] for p in parts])
    bound = torch.cat([p[1] for p in parts])
    if single:
        ci, bound = ci[0], bound[0]
    return (ci, bound) if return_error_bound else ci


class _NonFinite(Exception):
    """A map holds NaN or Inf (detected from the rows' squared norms, which every entry reaches)."""


def _chunks(a: torch.Tensor, chunk_bytes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(ci, bound, energy)`` for consecutive sample chunks of ``a`` ``[B, C, N]``, each converted to float64
    on its own so that the working set stays near ``chunk_bytes`` however large the batch."""
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
        raise _NonFinite
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


# ------------------------------------------------------------------------------------------------------------
# The Torch-Pruning importance: streaming calibration hooks and group scoring.


@dataclass
class LayerStats:
    """Streaming sums for one hooked tensor (one layer's input, output or norm output).

    Attributes:
        name: the layer's module name.
        channels: channels of the hooked tensor.
        samples: sample maps accumulated (a layer called twice per forward counts twice).
        positions: spatial positions (or tokens) per map, ``N``.
        ci_sum: per channel, the sum of CI over samples (float64).
        energy_sum: per channel, the sum over samples of the row's squared norm (float64).
        bound_sum: per channel, the sum of the quadrature error bounds (float64).
    """

    name: str
    channels: int
    samples: int = 0
    positions: int = 0
    ci_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    energy_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    bound_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for attr in ("ci_sum", "energy_sum", "bound_sum"):
            if getattr(self, attr) is None:
                setattr(self, attr, torch.zeros(self.channels, dtype=torch.float64))

    def mean_ci(self) -> torch.Tensor:
        """Mean CI per channel over the samples: the CHIP score before normalisation."""
        return self.ci_sum / max(self.samples, 1)

    def rms(self) -> float:
        """Root mean square of the channels' row norms over samples: ``sqrt(mean_{s,c} ||a_c||^2)``."""
        return math.sqrt(float(self.energy_sum.sum()) / max(self.samples * self.channels, 1))


_HOOKED_TYPES: dict[str, tuple[type, ...]] = {"input": WEIGHTED_TYPES, "output": WEIGHTED_TYPES, "norm": NORM_TYPES}


def _channels_of(module: nn.Module, feature: str) -> int:
    """Channels of the tensor hooked on ``module`` for ``feature``."""
    if feature == "norm":
        if isinstance(module, nn.LayerNorm):
            return int(module.normalized_shape[-1])
        return int(module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features)
    if isinstance(module, nn.Linear):
        return module.in_features if feature == "input" else module.out_features
    return module.in_channels if feature == "input" else module.out_channels


def _as_maps(x: torch.Tensor, module: nn.Module, feature: str) -> torch.Tensor:
    """``[B, C, N]`` view of a hooked tensor: conv/norm maps ``[B, C, *spatial]``; linear and LayerNorm tensors
    ``[B, *tokens, F]`` become ``[B, F, tokens]`` (a plain ``[B, F]`` has one position)."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _state_fingerprint(model: nn.Module) -> str:
    """Digest of every tensor in the state dict (names, dtypes, shapes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _shape_signature(model: nn.Module) -> tuple:
    return tuple((n, tuple(t.shape)) for n, t in model.state_dict().items())


class _Session:
    """One ``calibrate()`` block: hooks stage each forward's sums, committed only when the forward completes."""

    def __init__(self, model: nn.Module, stats: dict[str, LayerStats], feature: str, chunk_bytes: int) -> None:
        self.model = model
        self.stats = stats
        self.feature = feature
        self.chunk_bytes = chunk_bytes
        self.batches = 0
        self.sample_shape: tuple[int, ...] | None = None
        self.active = False
        self.staging: dict[str, list] = {}
        self.seen: dict[int, tuple[weakref.ref, str]] = {}
        self.aliases: dict[str, str] = {}

    def begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module is not self.model or self.active:  # a copy carrying our hooks, or a nested call
            return
        x = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        if x is not None and x.ndim >= 1:
            shape = tuple(x.shape[1:])
            if self.sample_shape is None:
                self.sample_shape = shape
            elif shape != self.sample_shape:
                raise ValueError(
                    f"calibration batch {self.batches + 1} has per-sample shape {shape}, but the first batch had "
                    f"{self.sample_shape}; feed every calibration batch at one input size"
                )
        self.staging, self.seen, self.active = {}, {}, True

    def end(self, module: nn.Module, args: tuple, output: Any) -> None:
        if module is not self.model or not self.active:
            return
        for name, (ci, energy, bound, samples, positions) in self.staging.items():
            st = self.stats[name]
            st.ci_sum += ci
            st.energy_sum += energy
            st.bound_sum += bound
            st.samples += samples
            st.positions = positions
        self.batches += 1
        self.staging, self.seen, self.active = {}, {}, False

    def on_input(self, name: str, layer: nn.Module, module: nn.Module, args: tuple) -> None:
        if module is layer and args:
            self._record(name, layer, args[0], "input")

    def check_input(self, name: str, layer: nn.Module, module: nn.Module, args: tuple) -> None:
        """Name the layer when a batch does not fit it, before the layer's own error."""
        if module is layer and args and isinstance(args[0], torch.Tensor) and args[0].ndim >= 2:
            x = args[0]
            want = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            got = x.shape[-1] if isinstance(layer, nn.Linear) else x.shape[1]
            if got != want:
                raise ValueError(
                    f"layer {name!r} expects {want} channels at its input, got a tensor of shape "
                    f"{tuple(x.shape)}; check the calibration images' channels and size"
                )

    def on_output(self, name: str, layer: nn.Module, module: nn.Module, args: tuple, output: Any) -> None:
        if module is layer:
            self._record(name, layer, output[0] if isinstance(output, (tuple, list)) else output, "output")

    def _record(self, name: str, layer: nn.Module, x: object, where: str) -> None:
        if not self.active:
            raise ValueError(
                f"layer {name!r} ran outside a call of the model given to calibrate(); inside the block call "
                "the model itself, model(images), not one of its submodules"
            )
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
            raise ValueError(f"the {where} of layer {name!r} is not a float tensor with a batch dimension")
        channels = self.stats[name].channels
        got = x.shape[-1] if isinstance(layer, (nn.Linear, nn.LayerNorm)) else x.shape[1]
        if got != channels:
            raise ValueError(
                f"layer {name!r} expects {channels} channels at its {where}, got a tensor of shape "
                f"{tuple(x.shape)}; check the calibration images' channels and size"
            )
        if self.feature == "input":  # two layers reading the same tensor (a block's conv and its shortcut)
            hit = self.seen.get(id(x))
            if hit is not None and hit[0]() is x:
                self.aliases[name] = hit[1]
                self._stage(name, self.staging[hit[1]])
                return
            self.seen[id(x)] = (weakref.ref(x), name)
        maps = _as_maps(x.detach(), layer, self.feature)
        ci = energy = bound = None
        try:
            for part_ci, part_bound, part_energy in _chunks(maps, self.chunk_bytes):
                sums = (part_ci.sum(0), part_energy.sum(0), part_bound.sum(0))
                ci, energy, bound = sums if ci is None else (ci + sums[0], energy + sums[1], bound + sums[2])
        except _NonFinite:
            raise ValueError(
                f"NaN or Inf in the {where} of layer {name!r} in calibration batch {self.batches + 1}; "
                "check the images and the weights of the layers before it"
            ) from None
        self._stage(name, [ci.cpu(), energy.cpu(), bound.cpu(), maps.shape[0], maps.shape[2]])

    def _stage(self, name: str, sums: list) -> None:
        if name in self.staging:  # a layer run twice in one forward: both maps count
            old = self.staging[name]
            sums = [old[0] + sums[0], old[1] + sums[1], old[2] + sums[2], old[3] + sums[3], sums[4]]
        self.staging[name] = list(sums)


class CHIPImportance(tp.importance.Importance):
    """CHannel Independence-based Pruning (CHIP) as a Torch-Pruning importance, computed exactly and streamed.

    Calibrate once, by running a few batches through the model inside :meth:`calibrate`; then, called with a
    dependency group, the importance returns one score per channel: the channel's mean channel independence
    ``CI_c`` over the calibration samples (low = nearly a combination of the other channels = pruned first),
    divided by its layer's scale, and averaged over the group's coupled layers.

    Which tensor carries a group's channels (``feature``; the default was chosen by accuracy after pruning trained
    networks, see ``docs/chip.md``):

    * ``"output"`` (default): the raw outputs of the layers producing the channels: convs, linears, depthwise
      convs; in a residual stage, every conv whose output is added into the stream.
    * ``"input"``: what the layers *consuming* the channels read: every conv/linear whose input channels are in
      the group, and depthwise convs. In conv-norm-activation chains that is the post-activation map (what the
      reference hooks); in a residual stage it is the post-add map each block reads. Consumers that read a pooled
      vector (one position: squeeze-excitation, the classifier) are used only when the group has no consumer
      with a spatial map; layers reading the very same tensor count once.
    * ``"norm"``: the outputs of the group's affine norm layers (an error for a group without one).

    Scores: per hooked tensor, the mean CI over samples divided by the mean over the tensor's channels
    (``normalization="mean"``), so every layer's scores average 1 and one global threshold (``prune(...,
    target_macs=...)``) compares channels with their own layer; the order within a layer is the raw CI's.
    ``"rms"`` divides by the root mean square of the channels' row norms instead (an orthogonal channel of average
    energy scores 1, a layer of copies ``1 / (2 sqrt(C))``), which empties layers whose maps have fewer positions
    than channels; ``"none"`` keeps the raw mean CI. Raw CI stays available from :meth:`layer_ci`.

    Args:
        feature: ``"output"``, ``"input"`` or ``"norm"`` (see above).
        normalization: ``"mean"``, ``"rms"`` or ``"none"``.
        group_reduction: how coupled layers' scores combine per channel: ``"mean"``, ``"max"``, ``"min"`` or
            ``"first"``.
        chunk_bytes: float64 working-set size per CI computation (samples of a batch are processed in chunks).

    Raises:
        ValueError: on an unknown option. When called: before calibration, on a model that changed since
            calibration, or on a group whose layers the calibration batches never reached (naming them).

    Example:
        >>> import timm, torch
        >>> from pfgdf_plugin import prune
        >>> model = timm.create_model("resnet18", num_classes=10)
        >>> imp = CHIPImportance()
        >>> with imp.calibrate(model):
        ...     for _ in range(2):
        ...         _ = model(torch.randn(4, 3, 64, 64))
        >>> result = prune(model, torch.randn(1, 3, 64, 64), importance=imp, target_macs=0.5)
        >>> round(result.macs_kept, 1), result.model(torch.randn(2, 3, 64, 64)).shape
        (0.5, torch.Size([2, 10]))
    """

    def __init__(
        self,
        feature: Feature = "output",
        normalization: Normalization = "mean",
        group_reduction: Reduction = "mean",
        chunk_bytes: int = 1 << 26,
    ) -> None:
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if group_reduction not in REDUCTIONS:
            raise ValueError(f"group_reduction must be one of {REDUCTIONS}, got {group_reduction!r}")
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be an integer >= 1, got {chunk_bytes!r}")
        self.feature: Feature = feature
        self.normalization: Normalization = normalization
        self.group_reduction: Reduction = group_reduction
        self.chunk_bytes = chunk_bytes
        self._stats: dict[str, LayerStats] | None = None
        self._aliases: dict[str, str] = {}
        self._fingerprint: str | None = None
        self._session: _Session | None = None
        self._checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.batches = 0

    def __repr__(self) -> str:
        return (
            f"CHIPImportance(feature={self.feature!r}, normalization={self.normalization!r}, "
            f"group_reduction={self.group_reduction!r})"
        )

    @contextlib.contextmanager
    def calibrate(self, model: nn.Module) -> Iterator[CHIPImportance]:
        """Hook ``model`` so that every forward inside the block accumulates CI, batch by batch.

        Inside the block the model runs in eval mode without gradients (both restored afterwards); only per-channel
        sums are kept, never feature maps. Each call starts from scratch. A forward that raises leaves no partial
        sums. When ``torch.distributed`` is initialised, the sums are all-reduced across ranks on leaving the
        block (every rank must leave it).

        Raises:
            ValueError: ``model`` is not a module or has no layer to hook; on leaving the block, no batch was
                run; inside it, a batch of another per-sample shape than the first, a layer receiving the
                wrong number of channels, or NaN/Inf activations (each naming the layer). The model's state,
                modes and hooks are left as they were.

        Example:
            >>> import torch
            >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
            >>> imp = CHIPImportance()
            >>> with imp.calibrate(net):
            ...     _ = net(torch.randn(5, 3, 16, 16))
            >>> tuple(imp.layer_ci("0").shape), imp.stats["0"].samples   # conv "0": 8 output channels, 5 maps
            ((8,), 5)
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if self._session is not None:
            raise RuntimeError("calibrate() is already running for this importance; blocks cannot nest")
        kinds = _HOOKED_TYPES[self.feature]
        targets = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
        if not targets:
            raise ValueError(f"model has no {'norm' if self.feature == 'norm' else 'conv or linear'} layer to hook")
        stats = {n: LayerStats(n, _channels_of(m, self.feature)) for n, m in targets}
        session = _Session(model, stats, self.feature, self.chunk_bytes)
        self._stats, self._fingerprint, self._aliases, self.batches = None, None, {}, 0
        self._checked = weakref.WeakKeyDictionary()
        handles = [
            model.register_forward_pre_hook(session.begin, with_kwargs=True),
            model.register_forward_hook(session.end),
        ]
        try:
            for name, module in targets:
                if self.feature == "input":
                    hook = module.register_forward_pre_hook(_bind(session.on_input, name, module))
                else:
                    hook = module.register_forward_hook(_bind(session.on_output, name, module))
                handles.append(hook)
            if self.feature != "input":
                for name, module in model.named_modules():
                    if isinstance(module, WEIGHTED_TYPES):
                        handles.append(module.register_forward_pre_hook(_bind(session.check_input, name, module)))
            self._session = session
            with torch.no_grad(), eval_mode(model):
                yield self
        finally:
            for handle in handles:
                handle.remove()
            self._session = None
        if session.batches == 0:
            raise ValueError(
                "calibrate(): no batch ran through the model inside the block; run at least one, e.g. "
                "`for images, _ in loader: model(images)`"
            )
        _all_reduce(stats, session)
        self._stats, self._aliases, self.batches = stats, dict(session.aliases), session.batches
        self._fingerprint = _state_fingerprint(model)

    @property
    def stats(self) -> dict[str, LayerStats]:
        """Per hooked layer name, its :class:`LayerStats` (empty before calibration)."""
        return dict(self._stats or {})

    def layer_ci(self, name: str) -> torch.Tensor:
        """Raw mean CI per channel of the tensor hooked at layer ``name`` (float64, unnormalised)."""
        return self._layer(name).mean_ci()

    def layer_scores(self, name: str) -> torch.Tensor:
        """Per channel of layer ``name``, the score groups are built from (normalised as configured)."""
        st = self._layer(name)
        ci = st.mean_ci()
        if self.normalization == "none":
            return ci
        scale = st.rms() if self.normalization == "rms" else float(ci.mean())
        return ci / scale if scale > 0 else torch.zeros_like(ci)

    def _layer(self, name: str) -> LayerStats:
        if self._stats is None:
            raise ValueError(self._not_calibrated())
        if name not in self._stats:
            raise ValueError(f"no layer named {name!r} was hooked during calibration")
        return self._stats[name]

    def _not_calibrated(self) -> str:
        return (
            "CHIPImportance has no calibration data: run a few batches inside `with imp.calibrate(model): ...` "
            "before scoring"
        )

    def _check_model(self, graph: tp.DependencyGraph) -> None:
        model = getattr(graph, "model", None)
        if model is None:
            return
        signature = _shape_signature(model)
        if self._checked.get(graph) == signature:
            return
        if _state_fingerprint(model) != self._fingerprint:
            raise ValueError(
                "the model changed since calibration (its weights, buffers or shapes differ); CHIP scores "
                "describe the calibrated model only: calibrate again before pruning"
            )
        self._checked[graph] = signature

    def members(self, group: tp.dependency.Group) -> list[tuple[ChannelSlice, str]]:
        """The group's members whose hooked tensors score it, each with the name its sums are stored under."""
        slices = channel_slices(group)
        if self.feature == "input":
            chosen = [s for s in slices if s.role == "in" or (s.role == "out" and is_depthwise(s.layer))]
        elif self.feature == "output":
            chosen = [s for s in slices if s.role == "out"]
        else:
            chosen = [s for s in slices if s.role == "norm"]
            if not chosen and slices:
                root = module_name(graph_of(group), group[0].dep.target.module)
                raise ValueError(
                    f"feature='norm': the group of layer {root!r} has no affine norm layer; "
                    "use feature='input' or 'output'"
                )
        out: list[tuple[ChannelSlice, str]] = []
        seen: set[str] = set()
        for s in chosen:
            key = self._aliases.get(s.name, s.name)
            if key not in seen:
                seen.add(key)
                out.append((s, key))
        stats = self._stats or {}
        spatial = [(s, k) for s, k in out if k in stats and stats[k].positions > 1]
        return spatial if spatial else out

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        if self._session is not None:
            raise RuntimeError("score the model after the calibrate() block has ended")
        if self._stats is None:
            raise ValueError(self._not_calibrated())
        self._check_model(graph_of(group))
        members = self.members(group)
        if not members:
            return None
        missing = [k for _, k in members if k not in self._stats]
        if missing:
            raise ValueError(f"layer(s) {', '.join(map(repr, missing))} were not hooked during calibration")
        unreached = [k for _, k in members if self._stats[k].samples == 0]
        if unreached:
            raise ValueError(
                f"no calibration data for layer(s) {', '.join(map(repr, unreached))}: the calibration batches "
                "never ran through them, so CHIP cannot score their channels (run batches that reach them, or "
                "pass them to prune(ignored_layers=...))"
            )
        for s, key in members:
            have = _channels_of(s.layer, self.feature)
            if have != self._stats[key].channels:
                raise ValueError(
                    f"layer {s.name!r} has {have} channels now but {self._stats[key].channels} when calibrated; "
                    "calibrate again before pruning"
                )
        slices = [s for s, _ in members]
        scores = [self.layer_scores(k)[list(s.idxs)] for s, k in members]
        return reduce_to_group(group, slices, scores, self.group_reduction)


def _bind(fn: Any, name: str, layer: nn.Module) -> Any:
    def hook(*args: Any) -> None:
        fn(name, layer, *args)

    return hook


def _all_reduce(stats: dict[str, LayerStats], session: _Session) -> None:
    """Sum every rank's calibration sums when ``torch.distributed`` is initialised (names in sorted order, so
    every rank packs the same layout); positions, equal wherever a layer ran, take the maximum."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    names = sorted(stats)
    counts = torch.tensor(
        [float(session.batches)] + [float(stats[n].samples) for n in names], dtype=torch.float64
    )
    sums = torch.cat([torch.cat([stats[n].ci_sum, stats[n].energy_sum, stats[n].bound_sum]) for n in names])
    positions = torch.tensor([float(stats[n].positions) for n in names], dtype=torch.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    counts, sums, positions = (t.to(device) if device else t for t in (counts, sums, positions))
    dist.all_reduce(counts)
    dist.all_reduce(sums)
    dist.all_reduce(positions, op=dist.ReduceOp.MAX)
    counts, sums, positions = counts.cpu(), sums.cpu(), positions.cpu()
    session.batches = round(float(counts[0]))
    i = 0
    for j, n in enumerate(names):
        st, c = stats[n], stats[n].channels
        st.ci_sum, st.energy_sum, st.bound_sum = (sums[i + k * c : i + (k + 1) * c].clone() for k in range(3))
        st.samples = round(float(counts[j + 1]))
        st.positions = round(float(positions[j]))
        i += 3 * c
