"""``python -m rotnet_jax.report``: the command of
``rotnet_jax.commands.report`` (this name is kept for the README's commands)."""

from rotnet_jax.commands.report import run

if __name__ == '__main__':
  run()
