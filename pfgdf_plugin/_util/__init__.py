"""Small shared utilities with no pruning knowledge: atomic files, argument validation, time budgets."""
