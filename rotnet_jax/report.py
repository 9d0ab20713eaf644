"""``python -m rotnet_jax.report``, the name the README uses:
runs ``rotnet_jax.commands.report``."""

from rotnet_jax.commands.report import run

if __name__ == '__main__':
  run()
