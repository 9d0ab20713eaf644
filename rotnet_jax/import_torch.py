"""``python -m rotnet_jax.import_torch``, the name the README uses:
runs ``rotnet_jax.commands.import_torch``."""

from rotnet_jax.commands.import_torch import run

if __name__ == '__main__':
  run()
