"""``python -m rotnet_jax.extract``, the name the README uses:
runs ``rotnet_jax.commands.extract``."""

from rotnet_jax.commands.extract import run

if __name__ == '__main__':
  run()
