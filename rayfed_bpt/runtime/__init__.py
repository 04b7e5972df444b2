"""The Ray layer: client actors, the driver actor, resources, checkpoints, faults.

It moves tensors and calls the algorithm interface; it holds no learning math.
"""

from .launch import run_experiment

__all__ = ["run_experiment"]
