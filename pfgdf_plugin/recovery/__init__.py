"""Recovery after pruning: BatchNorm recalibration, evaluation, and fine-tuning (single process or DDP)."""

from pfgdf_plugin.recovery.bn import recalibrate_bn
from pfgdf_plugin.recovery.distributed import train_loader
from pfgdf_plugin.recovery.evaluate import evaluate
from pfgdf_plugin.recovery.finetune import FinetuneConfig, FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "evaluate", "finetune", "recalibrate_bn", "train_loader"]
