"""``python -m rotnet_jax.import_torch``: the command of
``rotnet_jax.commands.import_torch`` (this name is kept for the README's commands)."""

from rotnet_jax.commands.import_torch import run

if __name__ == '__main__':
  run()
