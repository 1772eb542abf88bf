"""CHIP: channel independence, computed exactly (``math``), collected from a model's feature maps (``importance``)."""

from pfgdf_plugin.criteria.chip.importance import (
    FEATURES,
    NORMALIZATIONS,
    CHIPImportance,
    LayerStats,
    channel_independence,
)

__all__ = ["FEATURES", "NORMALIZATIONS", "CHIPImportance", "LayerStats", "channel_independence"]
