"""``python -m rotnet_jax.proposals``, as the other commands: runs
``rotnet_jax.commands.proposals``."""

from rotnet_jax.commands.proposals import run

if __name__ == '__main__':
  run()
