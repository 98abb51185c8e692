"""Patient-level k-fold splits (train / val / test per fold)."""
