"""Evaluation stage: predictions of every model × task × fold → metrics table and figures."""
