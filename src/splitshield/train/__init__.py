"""Training: the one loop, checkpoints, optimizers."""
from splitshield.train.loop import TrainResult, evaluate, train

__all__ = ["TrainResult", "evaluate", "train"]
