"""Every access to Torch-Pruning internals, in one place, so that an upgrade breaks here first and loudly."""
