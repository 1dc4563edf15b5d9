"""The HTTP layer: thin routes that decode, validate, enqueue and encode."""
