"""prune()'s result rendered for people: the per-group table with the totals underneath."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pfgdf_plugin._util.units import si

if TYPE_CHECKING:
    from pfgdf_plugin.pruning.result import PruneResult


def prune_table(result: PruneResult) -> str:
    """One line per dependency group (root layer, coupled layers, channels before -> after, share kept), then
    MACs, parameters, the threshold and what was left alone."""
    width = max([len("group (root layer)")] + [len(g.root) for g in result.groups])
    head = f"{'group (root layer)':<{width}}  {'coupled':>7}  {'channels':>13}  {'kept':>6}"
    lines = [head, "-" * len(head)]
    for g in result.groups:
        chans = f"{g.channels_before} -> {g.channels_after}"
        lines.append(f"{g.root:<{width}}  {len(g.layers):>7}  {chans:>13}  {g.kept:>6.1%}")
    lines.append("-" * len(head))
    target = "" if result.target is None else f" (target: keep {result.target[1]:.1%} of {result.target[0]})"
    lines += [
        f"MACs    {si(result.macs_before)} -> {si(result.macs_after)}  ({result.macs_kept:.1%} kept)",
        f"params  {si(result.params_before)} -> {si(result.params_after)}  ({result.params_kept:.1%} kept)",
        f"alpha   {result.alpha:.4g}{target}, {result.search_steps} search steps, {result.seconds:.2f} s",
    ]
    if result.ignored:
        lines.append(f"left alone: {', '.join(f'{k} ({v})' for k, v in result.ignored.items())}")
    return "\n".join(lines)
