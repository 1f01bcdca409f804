"""Dual instruction tuning (MLE on positive responses + token-level unlikelihood on toxic ones)."""
