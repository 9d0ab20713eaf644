"""``python -m rotnet_jax.plot``, the name the README uses:
runs ``rotnet_jax.commands.plot``."""

from rotnet_jax.commands.plot import run

if __name__ == '__main__':
  run()
