"""Training plots: the loss curve, read back from metrics.jsonl (drawn by the one plotting module)."""

from danlu.plots import plot_loss_curve as plot_loss_curve  # re-exported for train.loop
