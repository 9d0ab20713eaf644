"""``python -m rotnet_jax.export``, the name the README uses:
runs ``rotnet_jax.commands.export``."""

from rotnet_jax.commands.export import run

if __name__ == '__main__':
  run()
