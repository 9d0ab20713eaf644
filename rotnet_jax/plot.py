"""``python -m rotnet_jax.plot``: the command of
``rotnet_jax.commands.plot`` (this name is kept for the README's commands)."""

from rotnet_jax.commands.plot import run

if __name__ == '__main__':
  run()
