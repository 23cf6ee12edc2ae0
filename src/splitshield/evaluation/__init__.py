"""Evaluation: reconstruction metrics, figures and the other measurements reported next to accuracy."""
