"""A training-free evaluation: weighted k-nearest neighbours on frozen features.

    python main.py --config=configs/eval_knn.py \\
        --config.pretrained=/tmp/rotnet_cifar --workdir=/tmp/rotnet_knn

For every block of ``config.blocks`` (every block when empty), the frozen
backbone's features of the training split (the memory bank, with the
training subset of ``num_train_examples`` / ``examples_per_class``) and of
the test split are globally average-pooled and L2-normalised. Each test
image takes the ``knn_k`` training images of highest cosine similarity;
each neighbour votes for its label with weight ``exp(similarity /
knn_temperature)`` (the weighted k-NN of Wu et al., 2018, common in
self-supervised evaluation), and the class with the largest total wins.
Nothing is trained and no checkpoint is written: the driver writes
``config.json`` and ``results.json`` (head type ``knn``), both only after
every input was checked and every number computed.
"""

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from rotnet_jax import data as data_lib
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import DeviceSource
from rotnet_jax.data import arrays
from rotnet_jax.data import datasets
from rotnet_jax.data import transforms
from rotnet_jax.training import steps as steps_lib
from rotnet_jax.weights import restore

HEAD_TYPE = 'knn'
# Elements of one (test chunk x memory bank) similarity matrix: 2^24
# float32 is 64 MB, so 50,000 training images take chunks of 335 test
# images, whatever the size of the test split.
_MAX_SIMILARITIES = 2 ** 24
_MAX_CHUNK = 1024


def l2_normalize(features: np.ndarray) -> np.ndarray:
  """Rows of `features` scaled to unit length (zero rows stay zero)."""
  features = np.asarray(features, np.float32)
  norms = np.linalg.norm(features, axis=-1, keepdims=True)
  return features / np.maximum(norms, 1e-12)


def _chunk_votes(bank, bank_labels, queries, *, k: int, temperature: float,
                 num_classes: int):
  """Weighted class votes of `queries` ``[q, d]`` against `bank` ``[n, d]``."""
  similarities = jnp.matmul(queries, bank.T,
                            precision=jax.lax.Precision.HIGHEST)
  top, index = jax.lax.top_k(similarities, k)
  # Relative to each row's nearest neighbour: exp(1 / T) overflows float32
  # below T = 0.011, and the common factor changes no vote's winner.
  weights = jnp.exp((top - top[:, :1]) / temperature)
  labels = bank_labels[index]
  return jnp.sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) *
                 weights[..., None], axis=1)


_chunk_votes_jit = jax.jit(_chunk_votes,
                           static_argnames=('k', 'num_classes'))


def knn_votes(train_features, train_labels, test_features, *, k: int,
              temperature: float, num_classes: int,
              chunk_size: int | None = None) -> np.ndarray:
  """Per test row, the summed ``exp(cos / T)`` of its k nearest per class,
  divided by the nearest one's (the same factor for every class of a row).

  Args:
    train_features: ``[n, d]`` memory bank (normalised here).
    train_labels: ``int [n]`` in ``[0, num_classes)``.
    test_features: ``[m, d]`` queries (normalised here).
    k: neighbours per query (at most ``n``).
    temperature: the vote of a neighbour of cosine similarity ``s`` is
      ``exp(s / temperature)``.
    num_classes: classes voted for.
    chunk_size: queries per similarity matrix (default: what keeps it
      under 2^24 entries).

  Returns:
    ``float32 [m, num_classes]``.
  """
  bank = jnp.asarray(l2_normalize(train_features))
  bank_labels = jnp.asarray(np.asarray(train_labels, np.int32))
  queries = l2_normalize(test_features)
  count = len(queries)
  if count == 0:
    return np.zeros((0, num_classes), np.float32)
  k = min(int(k), len(bank))
  chunk = chunk_size or max(1, min(_MAX_CHUNK,
                                   _MAX_SIMILARITIES // max(len(bank), 1)))
  chunk = min(chunk, count)
  votes = []
  for start in range(0, count, chunk):
    part = queries[start:start + chunk]
    size = len(part)
    if size < chunk:  # One compiled shape for every chunk.
      part = np.concatenate([part, np.zeros((chunk - size, part.shape[1]),
                                            np.float32)])
    votes.append(np.asarray(_chunk_votes_jit(
        bank, bank_labels, jnp.asarray(part), k=k,
        temperature=float(temperature), num_classes=num_classes))[:size])
  return np.concatenate(votes)


def knn_predict(train_features, train_labels, test_features, *, k: int,
                temperature: float, num_classes: int,
                chunk_size: int | None = None) -> np.ndarray:
  """The class with the most weighted votes, ``int [m]`` (see
  :func:`knn_votes`; a tie goes to the lower class)."""
  return np.argmax(knn_votes(train_features, train_labels, test_features,
                             k=k, temperature=temperature,
                             num_classes=num_classes, chunk_size=chunk_size),
                   axis=-1)


def _source(config, split: str, mesh, *, subset: bool):
  """An evaluation-order source of `split` (one pass, padded, no
  augmentation); with the training subset when `subset`.

  ``data.make_source(..., train=False)`` reads the whole split; the memory
  bank of a semi-supervised evaluation must hold only its labelled subset,
  so the split is opened as for training and read as for evaluation.
  """
  device = config.pipeline == 'device'
  opened = datasets.open_split(config, split, train=subset, decoded=device)
  common = dict(mesh=mesh, batch_size=config.batch_size, train=False,
                seed=config.seed)
  if device:
    return DeviceSource(
        arrays.SplitArrays(opened.images, opened.labels, opened.num_classes,
                           opened.class_names), **common)
  from rotnet_jax.data import tfdata_source  # pylint: disable=g-import-not-at-top
  return tfdata_source.TFDataSource(
      opened, shuffle_buffer_size=config.shuffle_buffer_size, **common)


def _pooled_features(config, backbone: restore.RestoredBackbone, blocks,
                     source, mesh, what: str):
  """``({block: float32 [N, C]}, int labels [N])`` of one pass of `source`."""
  spec = backbone.spec
  order = models.block_names(spec)
  deepest = max(blocks, key=order.index)
  dtype = models.compute_dtype(config.half_precision, config.float64)
  graphdef = models.backbone_graphdef(spec, dtype)
  mean_rgb, std_rgb = tuple(config.mean_rgb), tuple(config.std_rgb)

  def run(variables, resident, inputs):
    batch = source.materialize(resident, inputs)
    images = transforms.normalize(batch['image'], mean_rgb, std_rgb, dtype)
    network = nnx.merge(graphdef, variables['params'],
                        variables['batch_stats'])
    _, features = network(images, train=False, up_to=deepest)
    pooled = {b: jnp.mean(features[b].astype(jnp.float32), axis=(1, 2))
              for b in blocks}
    return pooled, batch['label'], batch['mask']

  # Replicated outputs: every process gets every row (the bank is small:
  # N x C floats per block) and computes the same neighbours.
  program = jax.jit(run, out_shardings=parallel.replicated(mesh))
  sync = steps_lib.needs_sync_every_step(mesh)
  parts = []
  start = last_log = time.perf_counter()
  steps = source.steps_per_epoch
  for step, inputs in enumerate(source.epoch(0)):
    parts.append(program(backbone.variables, source.resident, inputs))
    if sync:
      jax.block_until_ready(parts[-1])
    now = time.perf_counter()
    if now - last_log > 10 or step + 1 == steps:
      jax.block_until_ready(parts[-1])
      now = time.perf_counter()
      done = (step + 1) * source.batch_size
      rate = done / max(now - start, 1e-9)
      logging.info('k-NN %s features: batch %d/%d | %.0f img/s | ETA %ds',
                   what, step + 1, steps, rate,
                   (steps - step - 1) * source.batch_size / rate)
      last_log = now
  parts = jax.device_get(parts)
  mask = np.concatenate([p[2] for p in parts]) > 0
  labels = np.concatenate([p[1] for p in parts])[mask].astype(np.int32)
  features = {b: np.concatenate([p[0][b] for p in parts])[mask]
              for b in blocks}
  return features, labels


def evaluate(config, mesh) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """The k-NN accuracy of every block on the test split.

  Computes only: the driver (``train.train_and_evaluate``) writes
  ``config.json`` and ``results.json`` from what it returns.

  Args:
    config: a checked config with ``head='knn'`` (``pretrained``,
      ``blocks``, ``knn_k``, ``knn_temperature``, the data keys).
    mesh: the data mesh the features are computed on.

  Returns:
    ``(network, heads)``: what was evaluated (as ``config.json``'s
    ``network``), and per block the entry of ``results.json``:
    ``final_test_accuracy`` (also the "best", there being one
    evaluation), ``test_samples``, ``train_samples``, ``k``,
    ``temperature``.

  Raises:
    InputError, MissingInputError: the backbone or the data cannot be read.
  """
  # A random backbone's BatchNorm statistics are re-estimated on training
  # batches, augmented as every other evaluation's are.
  reestimate_source = (data_lib.make_source(config, config.train_split,
                                            mesh, train=True)
                       if config.pretrained == restore.RANDOM else None)
  backbone = restore.load_backbone(config, mesh, reestimate_source)
  blocks = tuple(config.blocks) or models.block_names(backbone.spec)
  train_source = _source(config, config.train_split, mesh, subset=True)
  test_source = _source(config, config.test_split, mesh, subset=False)
  num_classes = train_source.num_classes
  k = min(config.knn_k, train_source.num_examples)
  if k < config.knn_k:
    logging.warning('knn_k=%d is more than the %d training images: using '
                    'k=%d', config.knn_k, train_source.num_examples, k)
  bank, bank_labels = _pooled_features(config, backbone, blocks,
                                       train_source, mesh, 'train')
  queries, test_labels = _pooled_features(config, backbone, blocks,
                                          test_source, mesh, 'test')
  fields = {'head_type': HEAD_TYPE, 'k': k,
            'temperature': config.knn_temperature, 'finetune': False,
            'dataset': config.dataset, 'pipeline': config.pipeline,
            'train_samples': len(bank_labels), **backbone.origin}
  heads = []
  for block in blocks:
    predictions = knn_predict(bank[block], bank_labels, queries[block], k=k,
                              temperature=config.knn_temperature,
                              num_classes=num_classes)
    accuracy = float(np.mean(predictions == test_labels))
    logging.info('k-NN (k=%d, T=%g) on %s: test accuracy %.2f%% (%d test '
                 'images, %d neighbours to choose from)', k,
                 config.knn_temperature, block, 100 * accuracy,
                 len(test_labels), len(bank_labels))
    heads.append(dict({
        'head': block, 'block': block, 'final_test_accuracy': accuracy,
        'final_epoch': 0, 'best_test_accuracy_test_selected': accuracy,
        'best_epoch_test_selected': 0, 'test_samples': len(test_labels)},
        **fields))
  network = {'backbone': backbone.spec, 'head': HEAD_TYPE,
             'blocks': list(blocks), 'finetune': False, **backbone.origin,
             'num_classes': num_classes}
  if train_source.class_names:
    network['classes'] = list(train_source.class_names)
  return network, heads
