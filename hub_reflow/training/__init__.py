"""The training run behind ``hub_reflow.train.train``."""
