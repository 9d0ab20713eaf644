"""``python -m rotnet_jax.extract``: the command of
``rotnet_jax.commands.extract`` (this name is kept for the README's commands)."""

from rotnet_jax.commands.extract import run

if __name__ == '__main__':
  run()
