"""``python -m rotnet_jax.reproduce``, the name the README uses:
runs ``rotnet_jax.commands.reproduce``."""

from rotnet_jax.commands.reproduce import run

if __name__ == '__main__':
  run()
