"""``python -m rotnet_jax.reproduce``: the command of
``rotnet_jax.commands.reproduce`` (this name is kept for the README's commands)."""

from rotnet_jax.commands.reproduce import run

if __name__ == '__main__':
  run()
