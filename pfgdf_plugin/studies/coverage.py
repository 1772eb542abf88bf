"""Which timm architectures :func:`~pfgdf_plugin.pruning.api.prune` handles: a measured sweep, one model per module.

For every timm model module (``timm.list_modules()``) the sweep takes the smallest variant (fewest parameters),
builds it with random weights (``torch.manual_seed(0)``, ``num_classes=10``), prunes it with
``prune(model, x, target_macs=0.5)`` on one input of the model's default size and checks four criteria:

1. the pruned model runs on a fresh random input and its output shape is unchanged;
2. MACs drop by at least 20% (kept <= :data:`MACS_KEPT_LIMIT`), or the family has a documented, measured
   exception in :data:`MACS_EXCEPTIONS` (status ``exempt``);
3. it exports to ONNX and ONNX Runtime's output matches PyTorch's: max abs error / max abs output
   <= :data:`~pfgdf_plugin.deploy.export.PARITY_TOLERANCE`;
4. the plan is consistent (:func:`plan_problems`).

Every model runs in its own Python process with a time and memory limit, so a hang, a crash or a memory blow-up
costs one row, never the sweep. Statuses: ``ok`` and ``exempt`` pass; ``fail`` (every stage ran, a criterion is
not met), ``exception`` (a stage raised, or the process died) and ``timeout`` do not.

Command line: ``pfgdf coverage`` (:mod:`pfgdf_plugin.cli.coverage`), also ``python -m pfgdf_plugin.studies.coverage``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pfgdf_plugin._util import io as _io

TARGET_MACS = 0.5
# Criterion 2: pruning at TARGET_MACS must remove at least 20% of the MACs.
MACS_KEPT_LIMIT = 0.8
SUCCESS_GOAL = 0.95
DEFAULT_TIMEOUT = 300.0
# A child above this resident memory is stopped: one model must not take the machine with it.
DEFAULT_MEMORY_LIMIT_GB = 12.0
NUM_CLASSES = 10
STATUSES: tuple[str, ...] = ("ok", "exempt", "fail", "exception", "timeout")
PASSING: tuple[str, ...] = ("ok", "exempt")
# Outputs that differ less than this (relative) between two random inputs are nearly constant: flagged, and a
# failure when pruning made them so.
_CONSTANT_OUTPUT = 1e-3
# The child prints its result on this line of stdout, and its progress on stderr lines with the second prefix.
_ROW_PREFIX = "pfgdf-coverage-row: "
_MARK_PREFIX = "pfgdf-coverage: "

@dataclass(frozen=True)
class MacsException:
    """A family whose structure cannot lose 20% of its MACs: the measured floor and why."""

    max_kept: float
    why: str


# family (timm module) -> documented, measured exception to criterion 2. Add an entry only with the measured
# floor (the row's ``macs_floor``, from prune()'s "out of reach" error) and the structural reason.
MACS_EXCEPTIONS: dict[str, MacsException] = {}


@dataclass(frozen=True)
class Case:
    """One sweep entry: a timm module (``kind="module"``: its smallest variant) or one model, with overrides.

    ``input_size`` replaces the model's default input size; ``create_kwargs`` go to ``timm.create_model`` (a
    ViT needs ``img_size`` to accept a smaller input).
    """

    name: str
    kind: Literal["module", "model"] = "model"
    input_size: tuple[int, int, int] | None = None
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)


# The default test run: one of each kind of structure, at reduced inputs so that all five take about a minute.
FAST_SUBSET: tuple[Case, ...] = (
    Case("resnet10t", input_size=(3, 64, 64)),  # plain CNN with residual adds
    Case("mobilenetv3_small_050", input_size=(3, 64, 64)),  # depthwise convs, squeeze-excitation, hard-swish
    Case("cspresnet50", input_size=(3, 64, 64)),  # CSP: split and concatenated cross-stage paths
    Case("vit_tiny_patch16_224", input_size=(3, 32, 32), create_kwargs={"img_size": 32}),  # plain ViT
    Case("edgenext_xx_small", input_size=(3, 64, 64)),  # hybrid: conv stages with transposed attention
)


@dataclass
class CoverageRow:
    """One model's result.

    ``macs_kept`` / ``params_kept`` are measured on the pruned model; ``onnx_error`` is ONNX Runtime's max abs
    error / max abs output against PyTorch; ``seconds`` is the wall time of the model's process and
    ``stage_seconds`` splits it (select, create, prune, check, export); ``output_spread`` /
    ``output_spread_before`` is how much the pruned / unpruned model's output differs between two random inputs,
    relative to its size (near 0: a constant output, which makes the ONNX comparison weak); ``redrawn`` names the
    all-zero weight tensors re-drawn before pruning; ``ignored`` is ``PruneResult.ignored`` (layers prune() left
    alone, with the reason); ``macs_floor`` is the smallest MACs fraction the structure
    reaches, set when ``target_macs`` was out of reach; ``problems`` lists every criterion not met, ``reason``
    the first of them or the exception.
    """

    family: str
    model: str
    status: str
    reason: str = ""
    input_size: list[int] | None = None
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    variants: int | None = None
    output_shape: list[int] | None = None
    output_spread: float | None = None
    output_spread_before: float | None = None
    redrawn: list[str] = field(default_factory=list)
    macs_before: float | None = None
    macs_after: float | None = None
    macs_kept: float | None = None
    params_before: int | None = None
    params_after: int | None = None
    params_kept: float | None = None
    macs_floor: float | None = None
    target_met: bool | None = None
    groups: int | None = None
    search_steps: int | None = None
    corrections: int | None = None
    onnx_error: float | None = None
    onnx_abs_error: float | None = None
    float64_error: float | None = None
    exporter: str | None = None
    ignored: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_gb: float | None = None

    @property
    def passed(self) -> bool:
        return self.status in PASSING

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoverageRow:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------ variant choice


def module_of(model_name: str) -> str:
    """The timm module (the row's family) that registers ``model_name``.

    Example:
        >>> module_of("resnet18")
        'resnet'
    """
    import timm

    for module in timm.list_modules():
        if model_name in timm.list_models(module=module):
            return module
    raise ValueError(f"{model_name!r} is not a registered timm model")


def count_parameters(name: str) -> int:
    """Parameters of timm model ``name`` (default head), built on the meta device: no memory, no init cost.

    Falls back to a real (random-weight) build when the model cannot be built on the meta device.

    Example:
        >>> count_parameters("resnet18")
        11689512
    """
    import timm
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
        except Exception:
            model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def is_classifier(name: str) -> bool:
    """False for models timm configures without classes (feature encoders of vision-language or SAM models)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is None or cfg.num_classes is None or cfg.num_classes > 0


def smallest_variant(module: str, *, include_test_models: bool = False) -> str:
    """The model of timm module ``module`` with the fewest parameters; ties go to the first name.

    Image classifiers are preferred: models timm configures with ``num_classes=0`` (encoders) count only when the
    module has nothing else. ``test_*`` models (timm's own reduced-width test fixtures) are left out unless
    ``include_test_models``.

    Raises:
        ValueError: ``module`` is not a timm model module (with the closest names).

    Example:
        >>> smallest_variant("mobilenetv3")
        'mobilenetv3_small_050'
    """
    import timm

    names = timm.list_models(module=module)
    if not names:
        raise ValueError(_unknown("module", module, timm.list_modules()))
    if not include_test_models:
        names = [n for n in names if not n.startswith("test_")] or names
    names = [n for n in names if is_classifier(n)] or names
    return min(names, key=lambda n: (count_parameters(n), n))


def _unknown(what: str, name: str, known: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown timm {what} {name!r}.{hint}"


def check_names(modules: Iterable[str] = (), models: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` listing every unknown module or model name with its closest matches."""
    import timm

    known_modules, known_models = set(timm.list_modules()), set(timm.list_models())
    errors = [_unknown("module", m, sorted(known_modules)) for m in modules if m not in known_modules]
    errors += [_unknown("model", m, sorted(known_models)) for m in models if m not in known_models]
    if errors:
        raise ValueError(" ".join(errors))


# ------------------------------------------------------------------------------------ one model, in process


def _mark(text: str) -> None:
    print(_MARK_PREFIX + text, file=sys.stderr, flush=True)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def _peak_rss_gb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def check_in_process(case: Case, *, target_macs: float = TARGET_MACS) -> CoverageRow:
    """Run every stage and criterion for ``case`` in this process; every exception is caught into the row.

    :func:`check_model` and :func:`sweep` run this in a child process; call it directly only for debugging.
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
        _mark(f"stage {name}")

    try:
        _mark("stage select")
        if case.kind == "module":
            import timm

            row.variants = len(timm.list_models(module=case.name))
            row.model = smallest_variant(case.name)
        else:
            row.model, row.family = case.name, module_of(case.name)
        _mark(f"model {row.model}")
        enter("create")
        _check_stages(row, case, target_macs, enter)
    except Exception as err:  # recorded, not raised: the row says which stage failed and how
        row.status, row.reason = "exception", f"{stage}: {_first_line(err)}"
    stages[stage] = round(time.perf_counter() - clock, 3)
    row.seconds = round(sum(stages.values()), 3)
    row.peak_rss_gb = _peak_rss_gb()
    return row


def _check_stages(row: CoverageRow, case: Case, target_macs: float, enter: Callable[[str], None]) -> None:
    import timm
    import torch

    from pfgdf_plugin.models.timm import default_input_size
    from pfgdf_plugin.pruning.api import TargetOutOfReachError, prune
    from pfgdf_plugin.recovery.finetune import recalibrate_bn

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
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(1))
    fresh = torch.randn(2, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(fresh)
    expected = tuple(reference.shape)
    row.output_spread_before = _spread(reference)

    enter("prune")
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
    pruned = result.model.eval()
    del model  # the export below may need the memory

    enter("check")
    problems: list[str] = []
    with torch.no_grad():
        out = pruned(fresh)
    row.output_shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    row.output_spread = _spread(out)
    if row.output_shape is None or tuple(row.output_shape) != expected:
        problems.append(f"output shape changed: {list(expected)} -> {row.output_shape}")
    elif (row.output_spread_before or 0.0) >= _CONSTANT_OUTPUT > (row.output_spread or 0.0):
        # It runs, with the right shape, and computes a constant: a layer pruned to nothing useful (e.g. one
        # channel before a channel LayerNorm, whose output is then 0 everywhere).
        problems.append(f"the pruned model's output no longer depends on its input (spread "
                        f"{row.output_spread_before:.2g} -> {row.output_spread:.2g})")
    exception = MACS_EXCEPTIONS.get(row.family)
    exempt = False
    if unreachable or row.macs_kept > MACS_KEPT_LIMIT:
        exempt = exception is not None and row.macs_kept <= exception.max_kept
        if unreachable and not exempt:
            problems.append(f"target_macs={target_macs:g} out of reach: the structure keeps at least "
                            f"{row.macs_floor:.1%} of MACs")
        elif not exempt:
            problems.append(f"MACs kept {row.macs_kept:.1%} > {MACS_KEPT_LIMIT:.0%}")
    problems += plan_problems(result, x)

    enter("export")
    export_problem = _export(row, pruned, size)
    if export_problem:
        problems.append(export_problem)

    row.problems = problems
    if not problems:
        row.status = "exempt" if exempt else "ok"
        if exempt:
            row.reason = f"documented exception: MACs kept {row.macs_kept:.1%} ({exception.why})"
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


def _export(row: CoverageRow, model: Any, size: tuple[int, ...]) -> str | None:
    """Export to ONNX and compare with PyTorch; the measured error is kept even above the tolerance."""
    from pfgdf_plugin.deploy.export import PARITY_TOLERANCE, export_onnx

    errors = []
    with tempfile.TemporaryDirectory(prefix="pfgdf-coverage-") as tmp:
        # The torch.export-based exporter first (the package default); the legacy one when it cannot trace.
        for exporter in ("dynamo", "torchscript"):
            try:
                # An unbounded tolerance: export_onnx then always returns its parity, which is judged here.
                done = export_onnx(model, os.path.join(tmp, "m.onnx"), size, exporter=exporter, tolerance=1e30)
            except Exception as err:
                errors.append(f"{exporter}: {_first_line(err)}")
                continue
            row.exporter = exporter
            row.onnx_error = done.parity.relative_error
            row.onnx_abs_error = done.parity.max_abs_error
            break
    if row.onnx_error is None:
        return "export: " + "; ".join(errors)
    if row.onnx_error > PARITY_TOLERANCE:
        own = _float64_error(model, size)
        row.float64_error = None if math.isnan(own) else own  # JSON has no NaN
        return f"ONNX error {row.onnx_error:.3g} > {PARITY_TOLERANCE:g} (PyTorch float32 vs float64: {own:.3g})"
    return None


def _float64_error(model: Any, size: tuple[int, ...]) -> float:
    """PyTorch's own float32 rounding on this model: tells an ill-conditioned model from a wrong graph (NaN if
    the model cannot run in float64)."""
    import torch

    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            single = model(x)
            double = copy.deepcopy(model).double()(x.double())
        return float((single.double() - double).abs().max() / double.abs().max().clamp_min(1e-30))
    except Exception:
        return float("nan")


def plan_problems(result: Any, example_inputs: Any) -> list[str]:
    """What is inconsistent between a :class:`~pfgdf_plugin.pruning.api.PruneResult` and its pruned model.

    Checked: every group keeps between 1 and all of its channels; every reported layer exists in the pruned
    model with the reported channel counts, none grew, none fell to 0; every conv, linear and norm layer's
    tensors match its declared channel counts; layers prune() left alone (``result.ignored``) kept their output
    channels; MACs and parameters re-counted on the pruned model equal the reported ones. Empty when consistent.

    Example:
        >>> import timm, torch
        >>> from pfgdf_plugin import prune
        >>> x = torch.randn(1, 3, 64, 64)
        >>> plan_problems(prune(timm.create_model("resnet18", num_classes=10), x, alpha=1.0), x)
        []
    """
    import torch
    import torch_pruning as tp

    problems: list[str] = []
    model = result.model
    for g in result.groups:
        if not 1 <= g.channels_after <= g.channels_before:
            problems.append(f"group {g.root}: {g.channels_before} -> {g.channels_after} channels")
    modules = dict(model.named_modules())
    for layer in result.layers:
        m = modules.get(layer.name)
        if m is None:
            problems.append(f"layer {layer.name} reported but not in the pruned model")
            continue
        now = _channels(m)
        if now is not None and now != (layer.in_after, layer.out_after):
            problems.append(f"layer {layer.name}: reported {layer.in_after}->{layer.out_after} channels, "
                            f"has {now[0]}->{now[1]}")
        if not (0 < layer.in_after <= layer.in_before and 0 < layer.out_after <= layer.out_before):
            problems.append(f"layer {layer.name}: {layer.in_before}->{layer.out_before} became "
                            f"{layer.in_after}->{layer.out_after} channels")
    by_name = {layer.name: layer for layer in result.layers}
    for name in result.ignored:
        layer = by_name.get(name)
        if layer is not None and layer.out_after != layer.out_before:
            problems.append(f"ignored layer {name} lost output channels: {layer.out_before} -> {layer.out_after}")
    for name, m in model.named_modules():
        bad = _tensor_mismatch(m)
        if bad:
            problems.append(f"layer {name}: {bad}")
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    except Exception as err:
        return [*problems, f"the pruned model cannot be re-counted: {_first_line(err)}"]
    if not math.isclose(macs, result.macs_after, rel_tol=1e-6) or int(params) != result.params_after:
        problems.append(f"re-counted MACs/params {macs:.6g}/{params} differ from the reported "
                        f"{result.macs_after:.6g}/{result.params_after}")
    return problems


def _channels(m: Any) -> tuple[int, int] | None:
    import torch.nn as nn

    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels, m.out_channels
    return None


def _tensor_mismatch(m: Any) -> str | None:
    """A layer whose declared channels and tensors disagree: pruned on one side only."""
    import torch.nn as nn

    shape = None if getattr(m, "weight", None) is None else tuple(m.weight.shape)
    bias = None if getattr(m, "bias", None) is None or not hasattr(m.bias, "shape") else tuple(m.bias.shape)
    if isinstance(m, nn.Linear):
        want = (m.out_features, m.in_features)
        if shape != want or bias not in (None, (m.out_features,)):
            return f"Linear({m.in_features}, {m.out_features}) holds weight {shape}, bias {bias}"
    elif isinstance(m, nn.modules.conv._ConvNd):
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            want = (m.in_channels, m.out_channels // m.groups)
        else:
            want = (m.out_channels, m.in_channels // m.groups)
        if shape is None or shape[:2] != want or bias not in (None, (m.out_channels,)):
            return f"{type(m).__name__}({m.in_channels}, {m.out_channels}) holds weight {shape}, bias {bias}"
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        sizes = {m.num_features}
        sizes |= {len(t) for t in (m.weight, m.bias, m.running_mean, m.running_var) if t is not None}
        if len(sizes) > 1:
            return f"{type(m).__name__}({m.num_features}) holds tensors of sizes {sorted(sizes)}"
    elif isinstance(m, nn.GroupNorm):
        if shape not in (None, (m.num_channels,)) or m.num_channels % m.num_groups:
            return f"GroupNorm({m.num_groups}, {m.num_channels}) holds weight {shape}"
    elif isinstance(m, nn.LayerNorm) and shape not in (None, tuple(m.normalized_shape)):
        return f"LayerNorm({tuple(m.normalized_shape)}) holds weight {shape}"
    return None


# ----------------------------------------------------------------------------------- one model, isolated


def _child_command(case: Case, target_macs: float) -> list[str]:
    cmd = [sys.executable, "-m", "pfgdf_plugin.studies.coverage", "--one", case.name, "--kind", case.kind,
           "--target-macs", repr(target_macs)]
    if case.input_size:
        cmd += ["--input-size", "x".join(map(str, case.input_size))]
    if case.create_kwargs:
        cmd += ["--create-kwargs", json.dumps(dict(case.create_kwargs))]
    return cmd


def _rss_gb(pid: int) -> float:
    """Resident memory of a process and its descendants (Linux /proc; 0 elsewhere)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total / 2**20


def check_model(
    name: str | Case,
    *,
    input_size: Sequence[int] | None = None,
    create_kwargs: Mapping[str, Any] | None = None,
    target_macs: float = TARGET_MACS,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
    memory_limit_gb: float = DEFAULT_MEMORY_LIMIT_GB,
) -> CoverageRow:
    """Check one timm model (or a :class:`Case`) against the four criteria, in a child process.

    The child gets ``threads`` torch / OpenMP threads and is stopped after ``timeout`` seconds (status
    ``timeout``) or above ``memory_limit_gb`` of resident memory (status ``exception``).

    Example:
        >>> row = check_model("resnet10t", input_size=(3, 64, 64))
        >>> row.status, row.macs_kept <= 0.8, row.onnx_error <= 1e-4
        ('ok', True, True)
    """
    from pfgdf_plugin._util import validate as check

    check.positive_float("timeout", timeout)
    check.integer("threads", threads, 1)
    check.positive_float("memory_limit_gb", memory_limit_gb)
    check.fraction("target_macs", target_macs)
    if isinstance(name, Case):
        case = name
    else:
        size = None if input_size is None else (int(input_size[0]), int(input_size[1]), int(input_size[2]))
        case = Case(name, input_size=size, create_kwargs=dict(create_kwargs or {}))
    return _run_child(case, target_macs=target_macs, timeout=timeout, threads=threads,
                      memory_limit_gb=memory_limit_gb)


def _run_child(case: Case, *, target_macs: float, timeout: float, threads: int, memory_limit_gb: float) -> CoverageRow:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PFGDF_COVERAGE_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    stopped = None
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Its own session, so that stopping it stops anything it started too.
        proc = subprocess.Popen(_child_command(case, target_macs), stdout=out, stderr=err, env=env,
                                start_new_session=True)
        try:
            while True:
                try:
                    proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.perf_counter() - start > timeout:
                    stopped = f"no result within {timeout:g} s"
                elif memory_limit_gb and (rss := _rss_gb(proc.pid)) > memory_limit_gb:
                    stopped = f"memory limit: {rss:.1f} GB resident > {memory_limit_gb:g} GB"
                if stopped:
                    _kill(proc)
                    break
        finally:
            if proc.poll() is None:  # interrupted: never leave a child behind
                _kill(proc)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return _row_from_child(case, stdout, stderr, proc.returncode, stopped, seconds)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _row_from_child(case: Case, stdout: str, stderr: str, code: int | None, stopped: str | None,
                    seconds: float) -> CoverageRow:
    rows = [line[len(_ROW_PREFIX):] for line in stdout.splitlines() if line.startswith(_ROW_PREFIX)]
    if rows and not stopped:
        row = CoverageRow.from_dict(json.loads(rows[-1]))
        row.seconds = round(seconds, 2)
        return row
    marks = [line[len(_MARK_PREFIX):] for line in stderr.splitlines() if line.startswith(_MARK_PREFIX)]
    model = next((m.split(" ", 1)[1] for m in reversed(marks) if m.startswith("model ")), "")
    stage = next((m.split(" ", 1)[1] for m in reversed(marks) if m.startswith("stage ")), "start")
    if stopped:
        status = "timeout" if stopped.startswith("no result") else "exception"
        reason = f"{stage}: {stopped}"
    else:
        status = "exception"
        tail = [line for line in stderr.strip().splitlines() if not line.startswith(_MARK_PREFIX)]
        died = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        reason = f"{stage}: process {died}" + (f": {tail[-1][:300]}" if tail else "")
    is_module = case.kind == "module"
    return CoverageRow(
        family=case.name if is_module else _quiet_module_of(case.name),
        model=model or ("" if is_module else case.name),
        status=status,
        reason=reason,
        input_size=list(case.input_size) if case.input_size else None,
        create_kwargs=dict(case.create_kwargs),
        problems=[reason],
        seconds=round(seconds, 2),
    )


def _quiet_module_of(name: str) -> str:
    try:
        return module_of(name)
    except ValueError:
        return ""


# ------------------------------------------------------------------------------------------------- sweep


@dataclass
class CoverageReport:
    """The sweep's rows and how they were made. ``date`` is UTC; ``settings`` holds the sweep's arguments."""

    rows: list[CoverageRow]
    date: str
    seconds: float
    environment: dict[str, Any]
    settings: dict[str, Any]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.rows)

    @property
    def success_rate(self) -> float:
        """Share of rows with status ``ok`` or ``exempt``."""
        return self.passed / len(self.rows) if self.rows else 0.0

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    def slowest(self, n: int = 10) -> list[CoverageRow]:
        return sorted(self.rows, key=lambda r: (-r.seconds, r.model))[:n]

    def summary(self) -> str:
        """A few lines: success rate against the goal, statuses, total time, the slowest ten, the failures."""
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        verdict = "meets" if self.success_rate >= SUCCESS_GOAL else "below"
        lines = [
            f"coverage: {self.passed}/{len(self.rows)} passed ({self.success_rate:.1%}; {verdict} the "
            f"{SUCCESS_GOAL:.0%} goal): {counts}",
            f"total time {_duration(self.seconds)}; slowest: "
            + ", ".join(f"{r.model or r.family} {r.seconds:.0f} s" for r in self.slowest()),
        ]
        lines += [f"  {r.status:<9} {r.family}/{r.model}: {r.reason}" for r in _by_family(self.rows) if not r.passed]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "seconds": self.seconds,
            "environment": self.environment,
            "settings": self.settings,
            "summary": {"rows": len(self.rows), "passed": self.passed, "success_rate": self.success_rate,
                        "goal": SUCCESS_GOAL, "counts": self.counts(),
                        "slowest": [{"model": r.model, "family": r.family, "seconds": r.seconds}
                                    for r in self.slowest()]},
            "macs_exceptions": {k: asdict(v) for k, v in MACS_EXCEPTIONS.items()},
            "rows": [r.to_dict() for r in _by_family(self.rows)],
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            _io.write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CoverageReport:
        """Read a report written by :meth:`to_json` (to regenerate the Markdown page without a new sweep)."""
        data = json.loads(Path(path).read_text())
        return cls(rows=[CoverageRow.from_dict(r) for r in data["rows"]], date=data["date"],
                   seconds=data["seconds"], environment=data["environment"], settings=data["settings"])

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """A complete documentation page: criteria, how it was run, versions, results; written to ``path``."""
        env, st = self.environment, self.settings
        v = env.get("versions", {})
        versions = ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "timm", "torch_pruning", "onnx",
                                                    "onnxruntime", "pfgdf_plugin") if k in v)
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        verdict = "meets" if self.success_rate >= SUCCESS_GOAL else "is below"
        lines = [
            "# Supported architectures",
            "",
            f"Measured on {self.date[:10]} by `{st.get('command', 'pfgdf coverage')}`: **{self.passed} of "
            f"{len(self.rows)}** models pass (**{self.success_rate:.1%}**; {verdict} the {SUCCESS_GOAL:.0%} "
            f"goal): {counts}. Total time {_duration(self.seconds)}.",
            "",
            f"Versions: {versions}. Machine: {env.get('cpu', '?')} ({env.get('machine', '?')}), "
            f"{env.get('cpus_available', '?')} CPUs available, {st.get('threads')} thread(s) per model, "
            f"{st.get('jobs')} model(s) at a time.",
            "",
            "## What is checked",
            "",
            f"One model per timm model module (`timm.list_modules()`): the variant with the fewest parameters "
            f"(counted on the meta device; `test_*` fixtures left out; modules with any image classifier use "
            f"only those), random weights (`torch.manual_seed(0)`, `num_classes={NUM_CLASSES}`), eval mode, "
            f"batch 1 at the model's default input size (`pretrained_cfg[\"input_size\"]`) unless the row says "
            "otherwise. BatchNorm running statistics are estimated on 4 random inputs first: with untrained "
            "statistics the activations of many random networks shrink to nothing and the output is the "
            "classifier's bias whatever the input, which no output or ONNX check can see through; for the same "
            "reason weight tensors timm initialises to exactly zero (some classifier heads) are re-drawn from "
            "N(0, 0.02²). "
            f"`prune(model, x, target_macs={st.get('target_macs', TARGET_MACS):g})`, then a model "
            "passes when all of these hold:",
            "",
            "1. the pruned model runs on two fresh random inputs and its output shape is unchanged (and, when the "
            "unpruned model's output depends on the input, the pruned one's still does);",
            f"2. MACs drop by at least {1 - MACS_KEPT_LIMIT:.0%} (kept <= {MACS_KEPT_LIMIT:.0%}), or its family "
            "has a documented, measured exception below (status `exempt`);",
            "3. it exports to ONNX (torch.export-based exporter, else the TorchScript one) and ONNX Runtime "
            "(CPU) matches PyTorch: max abs error / max abs output <= 1e-4 over 4 random inputs;",
            "4. the plan is consistent: every group keeps 1 to all of its channels; every reported layer has "
            "the reported channels in the pruned model; every conv / linear / norm layer's tensors match its "
            "declared channels; layers left alone kept their outputs; MACs and parameters re-counted on the "
            "pruned model equal the reported ones.",
            "",
            f"Each model runs in its own process, limited to {st.get('timeout', DEFAULT_TIMEOUT):g} s "
            f"(status `timeout`) and {st.get('memory_limit_gb', DEFAULT_MEMORY_LIMIT_GB):g} GB resident memory. "
            "`exception`: a stage raised (the reason names the stage) or the process died; `fail`: every stage "
            "ran and a criterion is not met. Seconds are wall time of the whole process (start, model "
            "selection and creation, pruning, checks, ONNX export and parity) on a shared machine.",
            "",
            "## Documented exceptions to criterion 2",
            "",
        ]
        if MACS_EXCEPTIONS:
            lines += ["| family | most MACs kept | why |", "| --- | ---: | --- |"]
            lines += [f"| `{k}` | {e.max_kept:.1%} | {_cell(e.why)} |" for k, e in sorted(MACS_EXCEPTIONS.items())]
        else:
            lines.append("None.")
        lines += ["", "## Slowest ten", "", "| model | family | seconds | longest stage | status |",
                  "| --- | --- | ---: | --- | --- |"]
        lines += [f"| `{r.model or '?'}` | `{r.family}` | {r.seconds:.1f} | {_longest_stage(r)} | {r.status} |"
                  for r in self.slowest()]
        lines += [
            "",
            "## Results",
            "",
            "*left alone*: groups `prune()` did not prune besides the classifier (it could not build them, they broke "
            "the model on a trial copy, or Torch-Pruning refused them); the JSON has each one with the reason.",
            "",
            "| family | model | input | MACs kept | params kept | left alone | ONNX error | seconds | status "
            "| reason |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in _by_family(self.rows):
            size = "x".join(map(str, r.input_size)) if r.input_size else ""
            if r.create_kwargs:
                size += " (" + ", ".join(f"{k}={v}" for k, v in r.create_kwargs.items()) + ")"
            onnx = "" if r.onnx_error is None else f"{r.onnx_error:.1e}"
            if r.onnx_error is not None and r.output_spread is not None and r.output_spread < _CONSTANT_OUTPUT:
                onnx += f" (weak: output spread {r.output_spread:.0e})"
            # Groups prune() left alone besides the classifier: its self-healing at work on this model.
            healed = sum(1 for why in r.ignored.values() if why != "classifier")
            alone = str(healed) if r.macs_kept is not None else ""
            lines.append(
                f"| `{r.family}` | `{r.model or '?'}` | {size} | {_pct(r.macs_kept)} | {_pct(r.params_kept)} | "
                f"{alone} | {onnx} | {r.seconds:.1f} | {r.status} | {_cell(r.reason)} |"
            )
        lines += ["", f"Raw results: every row with per-stage seconds, the layers left alone and the plan checks, "
                  f"in `{st.get('json_name', 'coverage.json')}`.", ""]
        text = "\n".join(lines)
        if path is not None:
            _io.write_text(path, text)
        return text


def _longest_stage(row: CoverageRow) -> str:
    if row.status == "timeout":  # the child never reported its stages; the reason names the one it was in
        return row.reason.split(":", 1)[0] + " (stopped)"
    if not row.stage_seconds:
        return ""
    name = max(row.stage_seconds, key=row.stage_seconds.__getitem__)
    return f"{name} {row.stage_seconds[name]:.1f} s"


def _by_family(rows: Iterable[CoverageRow]) -> list[CoverageRow]:
    return sorted(rows, key=lambda r: (r.family, r.model))


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def _cell(text: str, limit: int = 240) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _environment() -> dict[str, Any]:
    import timm

    from pfgdf_plugin.measure.latency import environment

    env = environment()
    env["versions"]["timm"] = timm.__version__
    return env


def cases_for(modules: Iterable[str] | None = None, models: Iterable[str] | None = None) -> list[Case]:
    """Sweep entries for modules (smallest variant each) and models; every module when both are empty."""
    import timm

    modules, models = list(modules or ()), list(models or ())
    check_names(modules, models)
    if not modules and not models:
        modules = timm.list_modules()
    return [Case(m, kind="module") for m in modules] + [Case(m) for m in models]


def sweep(
    modules: Iterable[str] | None = None,
    *,
    models: Iterable[str] | None = None,
    cases: Iterable[Case] | None = None,
    jobs: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
    memory_limit_gb: float = DEFAULT_MEMORY_LIMIT_GB,
    target_macs: float = TARGET_MACS,
    progress: bool = True,
    on_row: Callable[[CoverageRow, list[CoverageRow]], None] | None = None,
) -> CoverageReport:
    """Check many models, each in its own process, ``jobs`` at a time; a failing model costs only its row.

    ``modules`` (timm module names: the smallest variant of each), ``models`` (timm model names) and ``cases``
    are combined; with none of them every module of ``timm.list_modules()`` is checked. ``on_row(row, rows)``
    is called after each model (e.g. to save partial results). A progress bar on stderr names the running
    models.

    Raises:
        ValueError: an unknown module or model name (with the closest ones) or a bad setting, before anything runs.

    Example:
        >>> report = sweep(cases=FAST_SUBSET[:1], progress=False)
        >>> report.success_rate
        1.0
    """
    from tqdm.auto import tqdm

    from pfgdf_plugin._util import validate as check

    jobs = check.integer("jobs", jobs, 1)
    threads = check.integer("threads", threads, 1)
    timeout = check.positive_float("timeout", timeout)
    memory_limit_gb = check.positive_float("memory_limit_gb", memory_limit_gb)
    target_macs = check.fraction("target_macs", target_macs)
    todo = list(cases or ())
    if modules or models or not todo:
        todo = cases_for(modules, models) + todo
    settings = {"jobs": jobs, "threads": threads, "timeout": timeout, "memory_limit_gb": memory_limit_gb,
                "target_macs": target_macs, "cases": len(todo)}
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    environment = _environment()
    rows: list[CoverageRow] = []
    running: dict[int, str] = {}
    lock = threading.Lock()
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="coverage", unit="model", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    def one(index: int) -> CoverageRow:
        case = todo[index]
        with lock:
            running[index] = case.name
            bar.set_postfix_str(", ".join(running.values()), refresh=True)
        row = _run_child(case, target_macs=target_macs, timeout=timeout, threads=threads,
                         memory_limit_gb=memory_limit_gb)
        with lock:
            del running[index]
            rows.append(row)
            bar.set_postfix_str(", ".join(running.values()), refresh=False)
            bar.update(1)
            if on_row is not None:
                on_row(row, list(rows))
        return row

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(one, i) for i in range(len(todo))]:
                future.result()
    finally:
        bar.close()
    return CoverageReport(rows=_by_family(rows), date=date, seconds=round(time.perf_counter() - start, 1),
                          environment=environment, settings=settings)


# ---------------------------------------------------------------------------------------------- command


def _child_main(argv: Sequence[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pfgdf_plugin.studies.coverage --one")
    p.add_argument("--one", required=True)
    p.add_argument("--kind", choices=("module", "model"), default="model")
    p.add_argument("--target-macs", type=float, default=TARGET_MACS)
    p.add_argument("--input-size", default=None)
    p.add_argument("--create-kwargs", default="{}")
    args = p.parse_args(argv)
    import torch

    threads = int(os.environ.get("PFGDF_COVERAGE_THREADS", "1"))
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else None
    case = Case(args.one, kind=args.kind, input_size=size, create_kwargs=json.loads(args.create_kwargs))
    row = check_in_process(case, target_macs=args.target_macs)
    print(_ROW_PREFIX + json.dumps(row.to_dict()), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pfgdf_plugin.studies.coverage``: ``pfgdf coverage``'s options (and the child's ``--one``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--one" in argv:
        return _child_main(argv)
    from pfgdf_plugin.cli.coverage import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
