"""rotnet-jax: RotNet (Gidaris, Singh, Komodakis, ICLR 2018) in JAX/Flax."""

__version__ = '0.1.0'
