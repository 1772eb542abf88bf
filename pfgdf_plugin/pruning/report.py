"""prune()'s result rendered for people: the per-group table with the totals underneath, and the latency lines
under it for a latency target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def latency_block(latency: dict[str, Any], device: str | None = None) -> str:
    """The lines printed under the per-group table for a latency target, from ``LatencyOutcome.to_dict()``;
    ``device`` describes the --latency-table's runtime (named when nothing here could measure it).

    Examples:
        >>> outcome = {"goal": "speedup", "value": 2.0, "threads": 1, "table": "CPU X; device table t.json",
        ...            "predicted_before_ms": 4.0, "predicted_after_ms": 2.02, "measured_before_ms": None,
        ...            "measured_after_ms": None, "corrections": 0, "table_seconds": 0.0,
        ...            "predicted_speedup": 4.0 / 2.02, "measured_speedup": None, "target_speedup": 2.0}
        >>> print(latency_block(outcome, "CPU X"))
        latency on ONNX Runtime (CPU, 1 thread)
          target       2.00x faster
          predicted    4.000 ms -> 2.020 ms  (1.98x)
          measured     not measured here: table from CPU X
          corrections  0
          table        CPU X; device table t.json
    """
    threads = latency["threads"]
    if latency["goal"] == "speedup":
        target = f"{latency['value']:.2f}x faster"
    else:
        target = f"{latency['value']:.4g} ms ({latency['target_speedup']:.2f}x faster)"
    predicted = (f"{latency['predicted_before_ms']:.3f} ms -> {latency['predicted_after_ms']:.3f} ms  "
                 f"({latency['predicted_speedup']:.2f}x)")
    if latency["measured_speedup"] is not None:
        measured = (f"{latency['measured_before_ms']:.3f} ms -> {latency['measured_after_ms']:.3f} ms  "
                    f"({latency['measured_speedup']:.2f}x)")
    else:
        measured = f"not measured here: table from {device}" if device else "not measured here"
    return "\n".join([
        f"latency on ONNX Runtime (CPU, {threads} thread{'s' if threads != 1 else ''})",
        f"  target       {target}",
        f"  predicted    {predicted}",
        f"  measured     {measured}",
        f"  corrections  {latency['corrections']}",
        f"  table        {latency['table']}",
    ])
