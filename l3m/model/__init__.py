"""The model side of l3m: the block library, losses, metrics and initialisation."""
