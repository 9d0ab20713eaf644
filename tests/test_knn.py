"""The weighted k-NN vote of ``rotnet_jax.training.knn`` on hand-made features,
and the memory bank of a K-per-class evaluation.

The end-to-end k-NN evaluation of a trained RotNet (against a random
network) is in ``test_inference.py``, which trains one.
"""

import os

import numpy as np
import pytest

import helpers
import rotnet_jax
from rotnet_jax.data import datasets
from rotnet_jax.data import digits
from rotnet_jax.errors import ConfigError
from rotnet_jax.training import knn
from rotnet_jax.training import train

# Unit vectors at cosine 1, 0.8, 0.6 and 0 from the query [1, 0].
BANK = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]],
                np.float32)
BANK_LABELS = np.array([0, 1, 1, 2])
QUERY = np.array([[1.0, 0.0]], np.float32)


def test_votes_are_exp_of_similarity_over_temperature():
  votes = knn.knn_votes(BANK, BANK_LABELS, QUERY, k=3, temperature=0.5,
                        num_classes=3)
  # The 3 nearest: class 0 at cosine 1, class 1 at 0.8 and 0.6; class 2 (at
  # cosine 0) is not among them. Votes are relative to the nearest
  # neighbour's: exp((cos - 1) / T).
  expected = [1.0, np.exp(-0.2 / 0.5) + np.exp(-0.4 / 0.5), 0.0]
  np.testing.assert_allclose(votes[0], expected, rtol=1e-5)


def test_a_sharp_temperature_does_not_overflow():
  # exp(1 / 0.005) is beyond float32: the votes must stay finite and right.
  rng = np.random.default_rng(2)
  bank = rng.normal(size=(50, 8)).astype(np.float32)
  labels = rng.integers(0, 3, 50)
  queries = bank[[3, 10, 20]] + 1e-3
  votes = knn.knn_votes(bank, labels, queries, k=5, temperature=0.005,
                        num_classes=3)
  assert np.all(np.isfinite(votes))
  assert knn.knn_predict(bank, labels, queries, k=5, temperature=0.005,
                         num_classes=3).tolist() == labels[[3, 10, 20]].tolist()
  assert knn.knn_votes(bank, labels, queries[:0], k=5, temperature=0.1,
                       num_classes=3).shape == (0, 3)


def test_temperature_decides_between_one_close_and_two_farther_neighbours():
  # A sharp temperature trusts the single nearest neighbour (class 0); a
  # flat one lets class 1's two neighbours outvote it:
  # e^1 = 2.72 < e^0.8 + e^0.6 = 4.05.
  sharp = knn.knn_predict(BANK, BANK_LABELS, QUERY, k=3, temperature=0.07,
                          num_classes=3)
  flat = knn.knn_predict(BANK, BANK_LABELS, QUERY, k=3, temperature=1.0,
                         num_classes=3)
  assert sharp.tolist() == [0]
  assert flat.tolist() == [1]


def test_k_limits_the_neighbours_and_is_capped_by_the_bank():
  assert knn.knn_predict(BANK, BANK_LABELS, QUERY, k=1, temperature=1.0,
                         num_classes=3).tolist() == [0]
  # k=4 adds class 2 at cosine 0 (weight e^(0 - 1) relative to the
  # nearest).
  votes = knn.knn_votes(BANK, BANK_LABELS, QUERY, k=4, temperature=1.0,
                        num_classes=3)
  assert votes[0, 2] == pytest.approx(np.exp(-1.0))
  capped = knn.knn_votes(BANK, BANK_LABELS, QUERY, k=200, temperature=1.0,
                         num_classes=3)
  np.testing.assert_allclose(capped, votes)


def test_similarity_is_cosine_lengths_do_not_count():
  scaled_bank = BANK * np.array([[7.0], [0.1], [3.0], [50.0]], np.float32)
  for temperature in (0.07, 1.0):
    np.testing.assert_allclose(
        knn.knn_votes(scaled_bank, BANK_LABELS, QUERY * 9, k=3,
                      temperature=temperature, num_classes=3),
        knn.knn_votes(BANK, BANK_LABELS, QUERY, k=3,
                      temperature=temperature, num_classes=3), rtol=1e-5)


def _reference_votes(bank, labels, queries, k, temperature, num_classes):
  """Brute force in float64 numpy."""
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  votes = np.zeros((len(queries), num_classes))
  for row, query in enumerate(queries.astype(np.float64)):
    similarities = bank.astype(np.float64) @ query
    nearest = np.argsort(-similarities)[:k]
    for index in nearest:
      votes[row, labels[index]] += np.exp(
          (similarities[index] - similarities[nearest[0]]) / temperature)
  return votes


@pytest.mark.parametrize('chunk_size', [None, 1, 7])
def test_chunked_votes_match_brute_force(chunk_size):
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(120, 16)).astype(np.float32)
  labels = rng.integers(0, 5, 120)
  queries = rng.normal(size=(23, 16)).astype(np.float32)
  votes = knn.knn_votes(bank, labels, queries, k=9, temperature=0.2,
                        num_classes=5, chunk_size=chunk_size)
  np.testing.assert_allclose(
      votes, _reference_votes(bank, labels, queries, 9, 0.2, 5), rtol=1e-4)


def test_default_chunks_keep_the_similarity_matrix_bounded(monkeypatch):
  rng = np.random.default_rng(1)
  bank = rng.normal(size=(120, 4)).astype(np.float32)
  labels = rng.integers(0, 3, 120)
  queries = rng.normal(size=(9, 4)).astype(np.float32)
  # A budget of 300 similarities: chunks of 2 test rows x 120 bank rows.
  monkeypatch.setattr(knn, '_MAX_SIMILARITIES', 300)
  shapes = []
  chunk_votes = knn._chunk_votes_jit  # pylint: disable=protected-access

  def recording(bank, labels, queries, **kwargs):
    shapes.append(queries.shape)
    return chunk_votes(bank, labels, queries, **kwargs)

  monkeypatch.setattr(knn, '_chunk_votes_jit', recording)
  votes = knn.knn_votes(bank, labels, queries, k=5, temperature=0.1,
                        num_classes=3)
  assert shapes == [(2, 4)] * 5  # The last chunk padded to the same shape.
  np.testing.assert_allclose(
      votes, _reference_votes(bank, labels, queries, 5, 0.1, 3), rtol=1e-4)


def test_knn_refuses_finetuning_before_writing(tmp_path):
  workdir = tmp_path / 'knn'
  config = helpers.tiny_config(mode='evaluate', head='knn',
                               pretrained='random', finetune=True,
                               blocks=('conv2',))
  with pytest.raises(ConfigError, match='config.finetune=True'):
    train.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir)


def test_a_k_per_class_evaluation_votes_with_the_k_per_class_bank_alone(
    tiny_pretext_run, tmp_path, monkeypatch, one_device_mesh):
  """``examples_per_class=K`` (the paper's semi-supervised setting): the
  neighbours come from the first K training images of each class, not
  from the whole split (a larger bank, reported as the K-per-class
  score)."""
  per_class = 3
  banks = []
  real_predict = knn.knn_predict

  def recording(train_features, train_labels, test_features, **kwargs):
    banks.append((np.asarray(train_features), np.asarray(train_labels)))
    return real_predict(train_features, train_labels, test_features,
                        **kwargs)

  monkeypatch.setattr(knn, 'knn_predict', recording)
  results = train.train_and_evaluate(
      helpers.tiny_config(mode='evaluate', head='knn',
                          pretrained=tiny_pretext_run, blocks=('conv2',),
                          num_train_examples=0,
                          examples_per_class=per_class, knn_k=5),
      str(tmp_path / 'knn'), mesh=one_device_mesh)
  images, labels = digits.load('train')
  keep = datasets.training_subset(labels, examples_per_class=per_class)
  assert len(keep) == 10 * per_class
  (bank, bank_labels), = banks
  np.testing.assert_array_equal(bank_labels, labels[keep])
  # The bank's rows are those images' pooled conv2 features.
  expected = rotnet_jax.load(tiny_pretext_run).features(
      images[keep], 'conv2', pool=True)['conv2']
  np.testing.assert_allclose(bank, expected, rtol=1e-5, atol=1e-6)
  (head,) = results['heads']
  assert head['train_samples'] == 10 * per_class
  assert head['test_samples'] == 297  # The whole test split.
