"""splitshield: privacy-preserving split inference with model-inversion defenses, attacks and evaluation."""

__version__ = "0.1.0"
