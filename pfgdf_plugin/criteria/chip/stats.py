"""Streamed CHIP calibration sums: per hooked tensor, the per-channel sums of CI, energy and error bound.

Only these sums are kept during calibration, never feature maps; `all_reduce_stats` adds every rank's sums when
``torch.distributed`` is initialised.

Examples:
    >>> import torch
    >>> st = LayerStats("conv", channels=2)
    >>> st.add(torch.tensor([2.0, 4.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64),
    ...        torch.zeros(2, dtype=torch.float64), samples=2, positions=9)
    >>> st.mean_ci().tolist(), st.rms()
    ([1.0, 2.0], 0.7071067811865476)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


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

    def add(self, ci: torch.Tensor, energy: torch.Tensor, bound: torch.Tensor, samples: int, positions: int) -> None:
        """Add one batch's per-channel sums over ``samples`` maps of ``positions`` positions each."""
        self.ci_sum += ci
        self.energy_sum += energy
        self.bound_sum += bound
        self.samples += samples
        self.positions = positions

    def mean_ci(self) -> torch.Tensor:
        """Mean CI per channel over the samples: the CHIP score before normalisation."""
        return self.ci_sum / max(self.samples, 1)

    def rms(self) -> float:
        """Root mean square of the channels' row norms over samples: ``sqrt(mean_{s,c} ||a_c||^2)``."""
        return math.sqrt(float(self.energy_sum.sum()) / max(self.samples * self.channels, 1))


def all_reduce_stats(stats: dict[str, LayerStats], batches: int) -> int:
    """Sum every rank's calibration sums in place when ``torch.distributed`` is initialised.

    Names are packed in sorted order, so every rank sends the same layout; ``positions``, equal wherever a layer
    ran, take the maximum. Every rank must call it.

    Args:
        stats: this rank's sums per hooked layer name; replaced by the sums over all ranks.
        batches: calibration batches this rank ran.

    Returns:
        The batches run by all ranks together (``batches`` itself without a process group of two or more).
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return batches
    names = sorted(stats)
    counts = torch.tensor([float(batches)] + [float(stats[n].samples) for n in names], dtype=torch.float64)
    sums = torch.cat([torch.cat([stats[n].ci_sum, stats[n].energy_sum, stats[n].bound_sum]) for n in names])
    positions = torch.tensor([float(stats[n].positions) for n in names], dtype=torch.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    counts, sums, positions = (t.to(device) if device else t for t in (counts, sums, positions))
    dist.all_reduce(counts)
    dist.all_reduce(sums)
    dist.all_reduce(positions, op=dist.ReduceOp.MAX)
    counts, sums, positions = counts.cpu(), sums.cpu(), positions.cpu()
    i = 0
    for j, n in enumerate(names):
        st, c = stats[n], stats[n].channels
        st.ci_sum, st.energy_sum, st.bound_sum = (sums[i + k * c : i + (k + 1) * c].clone() for k in range(3))
        st.samples = round(float(counts[j + 1]))
        st.positions = round(float(positions[j]))
        i += 3 * c
    return round(float(counts[0]))
