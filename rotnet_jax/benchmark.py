"""``python -m rotnet_jax.benchmark``, the name the README uses:
runs ``rotnet_jax.commands.benchmark``."""

from rotnet_jax.commands.benchmark import run

if __name__ == '__main__':
  run()
