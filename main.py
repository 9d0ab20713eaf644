"""Runs a rotnet-jax experiment (see ``rotnet_jax/commands/train.py``).

    python main.py --config=configs/cifar.py --workdir=/tmp/rotnet_cifar
    python main.py --config=configs/eval_multlayer.py --workdir=/tmp/eval \
        --config.pretrained=/tmp/rotnet_cifar

Installed, the same command is ``rotnet-train``. Any config key can be
overridden, e.g. ``--config.num_epochs=10``; re-running the same command
resumes from the workdir's latest checkpoint.
"""

from rotnet_jax.commands import train

if __name__ == '__main__':
  train.run()
