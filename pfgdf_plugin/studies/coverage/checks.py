"""One model against the four criteria, in this process: build, prune, check the output and the plan, export.

`check_in_process` runs the stages and catches every exception into the row; the runner calls it in a child
process so that a hang, a crash or a memory blow-up costs one row.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

from pfgdf_plugin.studies.coverage.cases import (
    CONSTANT_OUTPUT,
    MACS_EXCEPTIONS,
    MACS_KEPT_LIMIT,
    NUM_CLASSES,
    TARGET_MACS,
    Case,
    MacsException,
    module_of,
    smallest_variant,
)
from pfgdf_plugin.studies.coverage.plan import plan_problems
from pfgdf_plugin.studies.coverage.protocol import first_line, mark
from pfgdf_plugin.studies.coverage.result import CoverageRow


def check_in_process(case: Case, *, target_macs: float = TARGET_MACS) -> CoverageRow:
    """Run every stage and criterion for ``case`` in this process; every exception is caught into the row.

    `check_model` and `sweep` run this in a child process; call it directly only for debugging.

    Args:
        case: the module (its smallest variant) or model to check.
        target_macs: the MACs fraction asked of `prune`.

    Returns:
        The row, with per-stage seconds; status ``exception`` names the stage that raised.
    """
    stages: dict[str, float] = {}
    row = CoverageRow(family=case.name if case.kind == "module" else "", model="", status="exception",
                      create_kwargs=dict(case.create_kwargs), stage_seconds=stages)
    stage = "select"
    clock = time.perf_counter()

    def enter(name: str) -> None:
        nonlocal stage, clock
        now = time.perf_counter()
        stages[stage] = round(now - clock, 3)
        stage, clock = name, now
        mark(f"stage {name}")

    try:
        mark("stage select")
        _select(row, case)
        mark(f"model {row.model}")
        enter("create")
        _check_stages(row, case, target_macs, enter)
    except Exception as err:  # recorded, not raised: the row says which stage failed and how
        row.status, row.reason = "exception", f"{stage}: {first_line(err)}"
    stages[stage] = round(time.perf_counter() - clock, 3)
    row.seconds = round(sum(stages.values()), 3)
    row.peak_rss_gb = _peak_rss_gb()
    return row


def _peak_rss_gb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def _select(row: CoverageRow, case: Case) -> None:
    if case.kind == "module":
        import timm

        row.variants = len(timm.list_models(module=case.name))
        row.model = smallest_variant(case.name)
    else:
        row.model, row.family = case.name, module_of(case.name)


def _check_stages(row: CoverageRow, case: Case, target_macs: float, enter: Callable[[str], None]) -> None:
    model, size = _create(row, case)
    x, fresh, expected = _reference(row, model, size)
    enter("prune")
    result, unreachable = _prune(row, model, x, target_macs)
    pruned = result.model.eval()
    del model  # the export below may need the memory

    enter("check")
    problems = _output_problems(row, pruned, fresh, expected)
    exemption, macs_problems = _macs_problems(row, target_macs, unreachable)
    problems += macs_problems
    problems += plan_problems(result, x)

    enter("export")
    export_problem = export_problems(row, pruned, size)
    if export_problem:
        problems.append(export_problem)
    _settle(row, problems, export_problem, exemption)


def _create(row: CoverageRow, case: Case) -> tuple[Any, tuple[int, ...]]:
    """The model with random weights, ready to give an input-dependent output; and its input size."""
    import timm
    import torch

    from pfgdf_plugin.models.timm import default_input_size
    from pfgdf_plugin.recovery import recalibrate_bn

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(row.model, pretrained=False, num_classes=NUM_CLASSES, **case.create_kwargs).eval()
    size = tuple(case.input_size) if case.input_size else default_input_size(model)
    row.input_size = list(size)
    row.redrawn = _redraw_zero_weights(model)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # Untrained running statistics let activations shrink layer by layer until the output is the classifier's
        # bias whatever the input (cspnext_tiny: 1e-11 before the head); statistics estimated on random inputs
        # keep the whole network in play, so that the output and ONNX checks test more than a constant.
        recalibrate_bn(model, [torch.randn(4, *size, generator=torch.Generator().manual_seed(3))])
    return model, size


def _reference(row: CoverageRow, model: Any, size: tuple[int, ...]) -> tuple[Any, Any, tuple[int, ...]]:
    """The pruning input, two fresh inputs and the unpruned output's shape on them."""
    import torch

    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(1))
    fresh = torch.randn(2, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(fresh)
    row.output_spread_before = _spread(reference)
    return x, fresh, tuple(reference.shape)


def _prune(row: CoverageRow, model: Any, x: Any, target_macs: float) -> tuple[Any, bool]:
    """Prune at ``target_macs``, or just above the measured floor when it is out of reach (then True)."""
    from pfgdf_plugin.pruning.api import TargetOutOfReachError, prune

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = prune(model, x, target_macs=target_macs)
            unreachable = False
        except TargetOutOfReachError as err:
            if err.floor >= 1.0:  # nothing to retry at: report the error as it is
                raise
            # Measure what the structure allows, so that an exception to criterion 2 rests on numbers.
            row.macs_floor = err.floor
            unreachable = True
            result = prune(model, x, target_macs=min(1.0, row.macs_floor + 0.005))
    row.warnings = sorted({str(w.message).splitlines()[0][:300] for w in caught if "prune()" in str(w.message)})
    row.macs_before, row.macs_after, row.macs_kept = result.macs_before, result.macs_after, result.macs_kept
    row.params_before, row.params_after = result.params_before, result.params_after
    row.params_kept = result.params_kept
    row.groups, row.search_steps = len(result.groups), result.search_steps
    row.corrections, row.target_met = result.extra.get("corrections"), result.extra.get("target_met")
    row.ignored = dict(result.ignored)
    return result, unreachable


def _output_problems(row: CoverageRow, pruned: Any, fresh: Any, expected: tuple[int, ...]) -> list[str]:
    """Criterion 1: the pruned model runs, keeps its output shape and still depends on its input."""
    import torch

    with torch.no_grad():
        out = pruned(fresh)
    row.output_shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    row.output_spread = _spread(out)
    if row.output_shape is None or tuple(row.output_shape) != expected:
        return [f"output shape changed: {list(expected)} -> {row.output_shape}"]
    if (row.output_spread_before or 0.0) >= CONSTANT_OUTPUT > (row.output_spread or 0.0):
        # It runs, with the right shape, and computes a constant: a layer pruned to nothing useful (e.g. one
        # channel before a channel LayerNorm, whose output is then 0 everywhere).
        return [f"the pruned model's output no longer depends on its input (spread "
                f"{row.output_spread_before:.2g} -> {row.output_spread:.2g})"]
    return []


def _macs_problems(row: CoverageRow, target_macs: float,
                   unreachable: bool) -> tuple[MacsException | None, list[str]]:
    """Criterion 2: the family's documented exception when it applies, and the problems left."""
    if not (unreachable or row.macs_kept > MACS_KEPT_LIMIT):
        return None, []
    exception = MACS_EXCEPTIONS.get(row.family)
    if exception is not None and row.macs_kept <= exception.max_kept:
        return exception, []
    if unreachable:
        return None, [f"target_macs={target_macs:g} out of reach: the structure keeps at least "
                      f"{row.macs_floor:.1%} of MACs"]
    return None, [f"MACs kept {row.macs_kept:.1%} > {MACS_KEPT_LIMIT:.0%}"]


def _settle(row: CoverageRow, problems: list[str], export_problem: str | None,
            exemption: MacsException | None) -> None:
    """The row's status and reason from its problems."""
    row.problems = problems
    if not problems:
        row.status = "exempt" if exemption else "ok"
        if exemption:
            row.reason = f"documented exception: MACs kept {row.macs_kept:.1%} ({exemption.why})"
    elif problems == [export_problem] and row.onnx_error is None:  # only the export raised
        row.status, row.reason = "exception", export_problem
    else:
        row.status, row.reason = "fail", problems[0]


def _redraw_zero_weights(model: Any) -> list[str]:
    """Re-draw weight tensors that are exactly zero from N(0, 0.02^2); returns their names.

    timm zero-initialises some classifier heads (MLP-Mixer, Sequencer, Hiera) so that training starts from a
    uniform prediction; with random weights everywhere else such a model's output is its bias (or 0) whatever the
    input, and the output and ONNX checks would compare constants.
    """
    import torch

    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and p.numel() and not p.any():
                p.normal_(0.0, 0.02)
                names.append(name)
    return names


def _spread(out: Any) -> float | None:
    """How much a batch-2 output differs between its two samples, relative to its largest value."""
    import torch

    if not isinstance(out, torch.Tensor) or out.shape[0] != 2:
        return None
    return float((out[0] - out[1]).abs().max() / out.abs().max().clamp_min(1e-30))


def export_problems(row: CoverageRow, model: Any, size: tuple[int, ...]) -> str | None:
    """Criterion 3: export to ONNX and compare with PyTorch; the measured error is kept even above the tolerance.

    Args:
        row: receives ``exporter``, ``onnx_error``, ``onnx_abs_error`` and, above the tolerance,
            ``float64_error``.
        model: the pruned model, in eval mode.
        size: one sample's input size.

    Returns:
        The problem (the export failed or ONNX Runtime does not match), or ``None``.
    """
    from pfgdf_plugin.deploy.onnx import export_onnx
    from pfgdf_plugin.deploy.parity import PARITY_TOLERANCE

    errors = []
    with tempfile.TemporaryDirectory(prefix="pfgdf-coverage-") as tmp:
        # The torch.export-based exporter first (the package default); the legacy one when it cannot trace.
        for exporter in ("dynamo", "torchscript"):
            try:
                # An unbounded tolerance: export_onnx then always returns its parity, which is judged here.
                done = export_onnx(model, os.path.join(tmp, "m.onnx"), size, exporter=exporter, tolerance=1e30)
            except Exception as err:
                errors.append(f"{exporter}: {first_line(err)}")
                continue
            row.exporter = exporter
            row.onnx_error = done.parity.relative_error
            row.onnx_abs_error = done.parity.max_abs_error
            break
    if row.onnx_error is None:
        return "export: " + "; ".join(errors)
    if row.onnx_error > PARITY_TOLERANCE:
        own = float64_error(model, size)
        row.float64_error = None if math.isnan(own) else own  # JSON has no NaN
        return f"ONNX error {row.onnx_error:.3g} > {PARITY_TOLERANCE:g} (PyTorch float32 vs float64: {own:.3g})"
    return None


def float64_error(model: Any, size: tuple[int, ...]) -> float:
    """PyTorch's own float32 rounding on this model: tells an ill-conditioned model from a wrong graph.

    Returns:
        Max abs difference between float32 and float64 outputs over 4 random inputs, relative to the largest
        float64 output; NaN when the model cannot run in float64.

    Examples:
        >>> import torch
        >>> float64_error(torch.nn.Linear(4, 2), (4,)) < 1e-6
        True
    """
    import torch

    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            single = model(x)
            double = copy.deepcopy(model).double()(x.double())
        return float((single.double() - double).abs().max() / double.abs().max().clamp_min(1e-30))
    except Exception:
        return float("nan")
