"""Backbones that return logits and a dict of named block features."""

from rotnet_jax.models.nin import NIN

__all__ = ['NIN']
