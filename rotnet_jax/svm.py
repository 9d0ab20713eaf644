"""``python -m rotnet_jax.svm``, the name the README uses:
runs ``rotnet_jax.commands.svm``."""

from rotnet_jax.commands.svm import run

if __name__ == '__main__':
  run()
