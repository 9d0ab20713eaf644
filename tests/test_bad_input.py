"""Bad input fails before training, names the problem, keeps checkpoints."""

import os

import jax
import numpy as np
import pytest

from helpers import tiny_config, write_image_folder
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.training import train
from rotnet_jax.workdir import checkpoint as checkpoint_lib

PIPELINES = ('device', 'tfdata')


def _run(config, workdir, mesh):
  return train.train_and_evaluate(config, str(workdir), mesh=mesh)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_missing_dataset_folder(pipeline, tmp_path, one_device_mesh):
  missing = str(tmp_path / 'no_such_dataset')
  config = tiny_config(pipeline=pipeline, dataset=missing)
  with pytest.raises(FileNotFoundError,
                     match=r"split 'train' not found: .*no_such_dataset/train"):
    _run(config, tmp_path / 'run', one_device_mesh)
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_empty_class_folder(pipeline, tmp_path, one_device_mesh):
  write_image_folder(str(tmp_path / 'data'), per_class=4)
  os.makedirs(tmp_path / 'data' / 'train' / 'empty_class')
  config = tiny_config(pipeline=pipeline, dataset=str(tmp_path / 'data'),
                       batch_size=4, cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(ValueError, match=r'train/empty_class has no images'):
    _run(config, tmp_path / 'run', one_device_mesh)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_unreadable_image_is_named(pipeline, tmp_path, one_device_mesh):
  write_image_folder(str(tmp_path / 'data'), per_class=4)
  bad = tmp_path / 'data' / 'train' / 'class_1' / 'broken.jpg'
  bad.write_bytes(b'this is not a JPEG file')
  config = tiny_config(pipeline=pipeline, dataset=str(tmp_path / 'data'),
                       batch_size=4, cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(ValueError, match=r'cannot read image file .*broken\.jpg'):
    _run(config, tmp_path / 'run', one_device_mesh)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_truncated_image_is_named_before_training(pipeline, tmp_path,
                                                  one_device_mesh):
  write_image_folder(str(tmp_path / 'data'), per_class=4)
  good = tmp_path / 'data' / 'train' / 'class_2' / '1.jpg'
  (tmp_path / 'data' / 'train' / 'class_2' / 'cut.jpg').write_bytes(
      good.read_bytes()[:300])  # A valid header, half the data.
  config = tiny_config(pipeline=pipeline, dataset=str(tmp_path / 'data'),
                       batch_size=4, cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(InputError, match=r'cannot read image file .*cut\.jpg'):
    _run(config, tmp_path / 'run', one_device_mesh)
  assert not os.path.exists(tmp_path / 'run' / 'metrics.jsonl')


def test_wrong_image_size_is_named(tmp_path, one_device_mesh):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  write_image_folder(str(tmp_path / 'data'), per_class=4)
  Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(
      tmp_path / 'data' / 'test' / 'class_0' / 'big.png')
  config = tiny_config(dataset=str(tmp_path / 'data'), batch_size=4,
                       cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(ValueError, match=r'big\.png is 36x40, expected 32x32'):
    _run(config, tmp_path / 'run', one_device_mesh)


def test_batch_size_not_divisible_by_devices(tmp_path, eight_device_mesh):
  config = tiny_config(batch_size=100)
  with pytest.raises(ValueError, match=r'batch_size=100 must be a positive '
                     r'multiple of the number of devices in the mesh \(8\); '
                     r'for example 96 or 104'):
    _run(config, tmp_path, eight_device_mesh)


def test_unknown_tfds_name(tmp_path, one_device_mesh):
  config = tiny_config(pipeline='tfdata', dataset='cifar_10',
                       data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match=r"dataset='cifar_10' is neither.*"
                     r"Close TFDS names: \[.*'cifar10'"):
    _run(config, tmp_path / 'run', one_device_mesh)


def _snapshot(workdir, config, mesh):
  spec = models.backbone_spec(config.model, image_size=32, num_classes=4)
  checkpoints = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
  restored = checkpoints.restore(checkpoints.latest_step(), model=(
      models.abstract_variables(spec, parallel.replicated(mesh))))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    metrics = f.read()
  with open(os.path.join(workdir, 'config.json')) as f:
    config_json = f.read()
  return (checkpoints.all_steps(), jax.device_get(restored['model']),
          metrics, config_json)


# A run and four refused ones: the slow tier (the default run checks a
# refused config against a trained workdir through the command line,
# test_hostile_input.py, and the network check below).
@pytest.mark.slow
def test_bad_input_leaves_a_trained_workdir_restorable(tmp_path,
                                                       one_device_mesh,
                                                       eight_device_mesh):
  workdir = tmp_path / 'run'
  good = tiny_config()
  _run(good, workdir, one_device_mesh)
  before = _snapshot(workdir, good, one_device_mesh)
  write_image_folder(str(tmp_path / 'data'), per_class=4)
  (tmp_path / 'data' / 'train' / 'class_0' / 'bad.png').write_bytes(b'x')
  attempts = [
      (tiny_config(dataset=str(tmp_path / 'missing')), one_device_mesh,
       FileNotFoundError),
      (tiny_config(dataset=str(tmp_path / 'data'), batch_size=4,
                   cache_dir=str(tmp_path / 'cache')), one_device_mesh,
       ValueError),
      (tiny_config(batch_size=100), eight_device_mesh, ValueError),
      (tiny_config(num_epochs=2, **{'model.width': 0.5}), one_device_mesh,
       ValueError),
  ]
  for config, mesh, error in attempts:
    with pytest.raises(error):
      _run(config, workdir, mesh)
  after = _snapshot(workdir, good, one_device_mesh)
  assert after[0] == before[0]
  for a, b in zip(jax.tree.leaves(before[1]), jax.tree.leaves(after[1])):
    np.testing.assert_array_equal(a, b)
  assert after[2:] == before[2:]


# Two runs: the slow tier (the default run refuses an evaluation's shape
# that differs from its weights', test_command_lines.py and
# test_evaluate.py).
@pytest.mark.slow
def test_resuming_a_different_network_names_the_difference(tmp_path,
                                                           one_device_mesh):
  _run(tiny_config(), tmp_path, one_device_mesh)
  config = tiny_config(num_epochs=2, **{'model.width': 0.5})
  with pytest.raises(InputError, match=r"different network \(backbone: "
                     r".*'width': 0.03125.* vs config .*'width': 0.5"):
    _run(config, tmp_path, one_device_mesh)
