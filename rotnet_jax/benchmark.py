"""``python -m rotnet_jax.benchmark``: the command of
``rotnet_jax.commands.benchmark`` (this name is kept for the README's commands)."""

from rotnet_jax.commands.benchmark import run

if __name__ == '__main__':
  run()
