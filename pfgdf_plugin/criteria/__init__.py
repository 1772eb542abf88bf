"""Filter-importance criteria: Torch-Pruning ``Importance`` classes with one ``__call__(group)`` each."""

from pfgdf_plugin.criteria.channels import ChannelSlice, channel_slices, primary_slices, reduce_to_group
from pfgdf_plugin.criteria.chip import CHIPImportance
from pfgdf_plugin.criteria.pfgdf import STATISTICS, PFGDFImportance, filter_statistic, gaussian_feature

__all__ = [
    "STATISTICS",
    "CHIPImportance",
    "ChannelSlice",
    "PFGDFImportance",
    "channel_slices",
    "filter_statistic",
    "gaussian_feature",
    "primary_slices",
    "reduce_to_group",
]
