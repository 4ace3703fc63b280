"""Evaluation: metrics and statistics of held-out predictions, and external checks of saved models."""
