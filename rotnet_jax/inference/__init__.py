"""Trained networks outside training: ``load`` gives a model object of
uint8 images (``model``); ``extract`` writes a split's features."""

from rotnet_jax.inference.model import Model
from rotnet_jax.inference.model import load

__all__ = ['Model', 'load']
