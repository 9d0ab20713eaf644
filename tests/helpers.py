"""Small configs and data for tests (importable without pytest's setup)."""

import hashlib
import json
import os

import jax
import numpy as np
from PIL import Image

from rotnet_jax import config_schema
from rotnet_jax.data import digits

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA flags of every test process: compile without LLVM's optimisations.
# The tests' programs are tiny, and compiling them is most of their time;
# at level 0 they compile about twice as fast (measured on the project's
# 2-core CPU machine). Results differ from the default level by float
# rounding only (other instruction choices: a NIN step's gradients agree to
# a relative 2.5e-6), and the tests compare runs compiled alike, or
# against PyTorch within tolerances far above that. conftest.py sets it
# for the test session; processes that tests start get it through
# one_device_env.
FAST_COMPILE_XLA_FLAGS = '--xla_backend_optimization_level=0'


def one_device_env(**overrides) -> dict[str, str]:
  """The environment for a process a test starts: one CPU device (not the
  session's 8 fake ones), fast compilation, `overrides` on top."""
  return dict(os.environ, XLA_FLAGS=FAST_COMPILE_XLA_FLAGS, **overrides)


# The two-process test's run: a small learning rate keeps float rounding
# (all-reduce order) from growing into visible differences in 5 steps.


def tiny_config(**overrides):
  """A config for seconds-long runs: 500 digits, 1/32-width NIN-3, 1 epoch."""
  config = config_schema.defaults()
  config.dataset = 'digits'
  config.pipeline = 'device'
  config.num_train_examples = 500
  config.model.num_blocks = 3
  config.model.width = 1 / 32
  # Unit BatchNorm scales: this 6-channel network learns rotations within
  # its one epoch with them (45% at seed 0), not with the official U(0, 1)
  # draws (chance at seeds 0 and 1; measured on the project's CPU machine).
  config.model.bn_scale_init = 'ones'
  config.batch_size = 96
  config.num_epochs = 1
  config.learning_rate_table = ((1, 0.1),)
  config.log_every_steps = 5
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  config.update_from_flattened_dict(overrides)
  return config


def write_image_folder(root, *, per_class=6, classes=3, split_sizes=None):
  """Writes digits as an image folder; even files PNG, odd files JPEG.

  Returns:
    ``{split: (images, labels)}``: the pixels written, in folder order.
  """
  split_sizes = split_sizes or {'train': per_class, 'test': per_class // 2}
  written = {}
  for split, count in split_sizes.items():
    images, labels = digits.load(split)
    out_images, out_labels = [], []
    for label in range(classes):
      class_dir = os.path.join(root, split, f'class_{label}')
      os.makedirs(class_dir, exist_ok=True)
      for i, image in enumerate(images[labels == label][:count]):
        ext = 'png' if i % 2 == 0 else 'jpg'
        Image.fromarray(image).save(os.path.join(class_dir, f'{i}.{ext}'))
        out_images.append(image)
        out_labels.append(label)
    written[split] = (np.stack(out_images), np.asarray(out_labels))
  return written


def source_batches(source, epoch=0):
  """Every batch of an epoch as numpy dicts, built the way the step does."""
  materialize = jax.jit(source.materialize)
  return [jax.tree.map(np.asarray, materialize(source.resident, inputs))
          for inputs in source.epoch(epoch)]


def evaluation_rows(source):
  """``{'image', 'label'}`` of the real (unpadded) rows of one pass."""
  batches = source_batches(source)
  mask = np.concatenate([b['mask'] for b in batches]) > 0
  return {k: np.concatenate([b[k] for b in batches])[mask]
          for k in ('image', 'label')}


def write_results(folder, experiment, accuracies, **extra):
  """Writes a hand-made ``results.json`` as training would (the fields a
  report or a plot reads): one head per entry of `accuracies`, a final
  accuracy of ``acc`` and a test-selected best of ``acc + 0.01``."""
  os.makedirs(folder, exist_ok=True)
  results = {'experiment': experiment, 'mode': 'evaluate',
             'dataset': 'cifar10', 'pipeline': 'device', 'num_epochs': 100,
             'complete': True, 'model_width': 1.0,
             'heads': [{'head': head, 'final_test_accuracy': acc,
                        'best_test_accuracy_test_selected': acc + 0.01,
                        'best_epoch_test_selected': 45, 'test_samples': 10000}
                       for head, acc in accuracies.items()]}
  results.update(extra)
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(results, f)


def snapshot(folder) -> dict[str, str]:
  """Every entry under `folder`: a file's SHA-256, a folder as ``'dir'``.

  Equal snapshots before and after a refused command: it wrote nothing.
  """
  result = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs:
      result[os.path.relpath(os.path.join(root, name), folder)] = 'dir'
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        result[os.path.relpath(path, folder)] = hashlib.sha256(
            f.read()).hexdigest()
  return result
