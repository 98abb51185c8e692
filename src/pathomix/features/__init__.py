"""Feature extraction stage: tiles → encoder → CLAM/TRIDENT-compatible h5 feature stores."""
