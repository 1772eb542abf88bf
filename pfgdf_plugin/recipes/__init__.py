"""Recipes: the whole job (train or load, prune, recover, export, time, report) described by one YAML file."""
