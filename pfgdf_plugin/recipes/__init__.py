"""Recipes: the whole job (train or load, prune, recover, export, time, report) described by one YAML file.

`Recipe` (in `recipe`, its sections in `sections`) says what to run; `run_job` / `execute_job` (in `run`) run it;
`summary_table` / `summary_markdown` (in `report`) render its summary.
"""

from pfgdf_plugin.recipes.recipe import Recipe, apply_overrides
from pfgdf_plugin.recipes.report import summary_markdown, summary_table
from pfgdf_plugin.recipes.run import JobResult, execute_job, run_job

__all__ = ["JobResult", "Recipe", "apply_overrides", "execute_job", "run_job", "summary_markdown", "summary_table"]
