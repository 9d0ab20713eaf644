"""Test setup: 8 fake CPU devices, fast failure of stuck collectives.

XLA reads these flags once, when JAX first creates its CPU backend, so they
are set here before any test imports JAX. Tests that need one device build a
mesh of ``jax.devices()[:1]``.
"""

import os

NUM_FAKE_DEVICES = 8
MULTI_DEVICE_XLA_FLAGS = (
    f'--xla_force_host_platform_device_count={NUM_FAKE_DEVICES} '
    # Several CPU devices in one process can deadlock XLA's collectives
    # (DESIGN.md section 5): fail in seconds instead of hanging CI.
    '--xla_cpu_collective_call_warn_stuck_timeout_seconds=5 '
    '--xla_cpu_collective_call_terminate_timeout_seconds=15')

os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                           MULTI_DEVICE_XLA_FLAGS).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

from rotnet_jax import config_schema  # pylint: disable=wrong-import-position
from rotnet_jax import parallel  # pylint: disable=wrong-import-position
from rotnet_jax.data import digits  # pylint: disable=wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """Shares compiled programs between the test runs of one session.

  Every ``train_and_evaluate`` call builds fresh jitted closures; with the
  persistent cache, the second run of the same model shape skips XLA
  compilation, which is most of a tiny run's time on CPU.
  """
  jax.config.update('jax_compilation_cache_dir',
                    str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def tiny_config(**overrides):
  """A config for seconds-long runs: 500 digits, 1/32-width NIN-3, 1 epoch."""
  config = config_schema.defaults()
  config.dataset = 'digits'
  config.pipeline = 'device'
  config.num_train_examples = 500
  config.model.num_blocks = 3
  config.model.width = 1 / 32
  config.batch_size = 96
  config.num_epochs = 1
  config.learning_rate_table = ((1, 0.1),)
  config.log_every_steps = 5
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture
def one_device_mesh():
  return parallel.make_mesh(jax.devices()[:1])


@pytest.fixture
def eight_device_mesh():
  assert jax.device_count() == NUM_FAKE_DEVICES
  return parallel.make_mesh()


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
