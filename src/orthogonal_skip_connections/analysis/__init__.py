"""Layer 4, analysis: measurements and verdicts computed from trained models and runs (no Hydra)."""
