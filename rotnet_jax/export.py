"""``python -m rotnet_jax.export``: the command of
``rotnet_jax.commands.export`` (this name is kept for the README's commands)."""

from rotnet_jax.commands.export import run

if __name__ == '__main__':
  run()
