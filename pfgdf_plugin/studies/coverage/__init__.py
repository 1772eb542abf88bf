"""Which timm architectures `pfgdf_plugin.pruning.api.prune` handles: a measured sweep, one model per module.

For every timm model module (``timm.list_modules()``) the sweep takes the smallest variant (fewest parameters),
builds it with random weights (``torch.manual_seed(0)``, ``num_classes=10``), prunes it with
``prune(model, x, target_macs=0.5)`` on one input of the model's default size and checks four criteria:

1. the pruned model runs on a fresh random input and its output shape is unchanged;
2. MACs drop by at least 20% (kept <= `MACS_KEPT_LIMIT`), or the family has a documented, measured
   exception in `MACS_EXCEPTIONS` (status ``exempt``);
3. it exports to ONNX and ONNX Runtime's output matches PyTorch's: max abs error / max abs output
   <= `pfgdf_plugin.deploy.parity.PARITY_TOLERANCE`;
4. the plan is consistent (`plan_problems`).

Every model runs in its own Python process with a time and memory limit, so a hang, a crash or a memory blow-up
costs one row, never the sweep. Statuses: ``ok`` and ``exempt`` pass; ``fail`` (every stage ran, a criterion is
not met), ``exception`` (a stage raised, or the process died) and ``timeout`` do not.

Modules: `cases` (what is checked, variant choice), `checks` and `plan` (one model, in process), `runner`
(child processes, limits, `sweep`), `result` (the results), `figures` (figures over the results), `report` (their
summary, JSON and Markdown), `child` (the child process's entry point), `protocol` (the lines between child and
runner). Command line: ``pfgdf coverage`` (`pfgdf_plugin.cli.coverage`).
"""

# `child` is left out on purpose: it runs as ``python -m``, and importing it here would import it twice.
from pfgdf_plugin.studies.coverage.cases import (
    CONSTANT_OUTPUT,
    DEFAULT_MEMORY_LIMIT_GB,
    DEFAULT_TIMEOUT,
    FAST_SUBSET,
    MACS_EXCEPTIONS,
    MACS_KEPT_LIMIT,
    NUM_CLASSES,
    TARGET_MACS,
    Case,
    MacsException,
    cases_for,
    check_names,
    count_parameters,
    is_classifier,
    module_of,
    smallest_variant,
)
from pfgdf_plugin.studies.coverage.checks import check_in_process
from pfgdf_plugin.studies.coverage.plan import plan_problems
from pfgdf_plugin.studies.coverage.report import render_json, render_markdown, render_summary
from pfgdf_plugin.studies.coverage.result import PASSING, STATUSES, SUCCESS_GOAL, CoverageReport, CoverageRow, by_family
from pfgdf_plugin.studies.coverage.runner import check_model, sweep

__all__ = [
    "CONSTANT_OUTPUT",
    "DEFAULT_MEMORY_LIMIT_GB",
    "DEFAULT_TIMEOUT",
    "FAST_SUBSET",
    "MACS_EXCEPTIONS",
    "MACS_KEPT_LIMIT",
    "NUM_CLASSES",
    "PASSING",
    "STATUSES",
    "SUCCESS_GOAL",
    "TARGET_MACS",
    "Case",
    "CoverageReport",
    "CoverageRow",
    "MacsException",
    "by_family",
    "cases_for",
    "check_in_process",
    "check_model",
    "check_names",
    "count_parameters",
    "is_classifier",
    "module_of",
    "plan_problems",
    "render_json",
    "render_markdown",
    "render_summary",
    "smallest_variant",
    "sweep",
]
