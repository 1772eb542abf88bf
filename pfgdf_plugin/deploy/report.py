"""Text rendering of export results: file sizes, the mobile-usability summary, the `pfgdf export` table.

Examples:
    >>> file_size(2_500_000), file_size(12_345)
    ('2.50 MB', '12.3 kB')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pfgdf_plugin._util.units import file_size

if TYPE_CHECKING:  # types only: the result modules import this one
    from pfgdf_plugin.deploy.bundle import BundleResult
    from pfgdf_plugin.deploy.int8 import Int8Export
    from pfgdf_plugin.deploy.ort import EpUsability


def usability_summary(usability: Sequence[EpUsability]) -> str:
    """One line per execution provider: supported nodes, partitions, verdict."""
    return "\n".join(
        f"{u.ep}: {u.supported_nodes}/{u.nodes} nodes supported in {u.partitions} partition(s), "
        f"worth trying: {u.suitability}"
        + (f" (unsupported ops: {', '.join(u.unsupported_ops)})" if u.unsupported_ops else "")
        for u in usability
    )


def int8_check(int8: Int8Export) -> str:
    """The INT8 model's check column: top-1 agreement with the float model (a proxy) and the size ratio."""
    agreement = "n/a" if int8.top1_agreement is None else f"{int8.top1_agreement:.1%}"
    if int8.float_classes == 1:
        classes = "the float model predicts one class for all of them, so this agreement says nothing"
    else:
        classes = f"{int8.float_classes} distinct float top-1 classes"
    return (f"top-1 agreement with float {agreement} on {int8.images} calibration images "
            f"({classes}; a proxy, not an accuracy); size {int8.size_ratio:.0%} of float")


def bundle_rows(result: BundleResult) -> list[tuple[str, str, str]]:
    """(file, size, check) for every file `export_bundle` wrote, in the order it wrote them (export.json aside)."""
    rows = [(str(result.onnx.path), file_size(result.onnx.size_bytes), str(result.onnx.parity))]
    if result.original is not None:
        rows.append((str(result.original.path), file_size(result.original.size_bytes), str(result.original.parity)))
    if result.ort is not None:
        rows.append((str(result.ort.path), file_size(result.ort.size_bytes), str(result.ort.parity)))
        rows.append((str(result.ort.config_path), "", "operators for a reduced ONNX Runtime Mobile build"))
    if result.int8 is not None:
        rows.append((str(result.int8.path), file_size(result.int8.size_bytes), int8_check(result.int8)))
    if result.int8_ort is not None:
        rows.append((str(result.int8_ort.path), file_size(result.int8_ort.size_bytes), str(result.int8_ort.parity)))
    if result.operator_config is not None:
        rows.append((str(result.operator_config), "", "operators for one reduced build running both .ort models"))
    return rows


def parity_warnings(result: BundleResult) -> list[str]:
    """A warning per file whose parity check passed but proves little (`pfgdf_plugin.deploy.parity.Parity.weakness`).

    ``tests/test_export.py`` shows one from `pfgdf export` on a model whose outputs are about 1e-6.
    """
    checked = [result.onnx, result.original, result.ort, result.int8_ort]
    return [f"warning: {c.path}: weak parity check: {c.parity.weakness}. It passed, but says little about this "
            "export; a trained model (or one with recalibrated BatchNorm) gives a meaningful check"
            for c in checked if c is not None and c.parity.passed and c.parity.weakness]


def bundle_table(result: BundleResult) -> str:
    """The `pfgdf export` summary: the files table, the MACs reduction, mobile usability, notes and warnings."""
    rows = bundle_rows(result)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'file':<{width}}  {'size':>9}  check", "-" * (width + 60)]
    lines += [f"{path:<{width}}  {size:>9}  {note}" for path, size, note in rows]
    if result.macs_reduction is not None:
        lines.append(f"MACs: original / pruned = {result.macs_reduction:.2f}x (the most a dense model can gain)")
    if result.ort is not None and result.ort.usability:
        lines.append("mobile usability (onnxruntime's partitioning check):")
        lines += [f"  {line}" for line in usability_summary(result.ort.usability).splitlines()]
    lines += ([result.baseline_note] if result.baseline_note else []) + parity_warnings(result) + result.warnings
    return "\n".join(lines)
