"""rotnet-jax: RotNet (Gidaris, Singh, Komodakis, ICLR 2018) in JAX/Flax.

``rotnet_jax.load(path)`` gives a trained network as functions of uint8
images (see ``rotnet_jax.inference.model``). It is imported on first use, so
``import rotnet_jax`` stays light (no JAX, no Flax).
"""

__version__ = '0.1.0'


def __getattr__(name):
  # Lazy: the command-line modules import the package first and set up
  # JAX (flags, platforms) before anything imports it.
  if name == 'load':
    from rotnet_jax import inference  # pylint: disable=g-import-not-at-top
    return inference.load
  if name == 'Model':
    from rotnet_jax import inference  # pylint: disable=g-import-not-at-top
    return inference.Model
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + ['load', 'Model'])
