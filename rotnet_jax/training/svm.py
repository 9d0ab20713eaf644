"""The linear-SVM benchmark of Goyal et al. (ICCV 2019) on PASCAL VOC07.

    python -m rotnet_jax.extract --pretrained=W --dataset=VOCdevkit \\
        --split=trainval --blocks= --pool=svm --out=trainval.npz
    python -m rotnet_jax.extract ... --split=test --out=test.npz
    python -m rotnet_jax.svm --train=trainval.npz --test=test.npz \\
        --out=svm.json

One binary linear SVM per class on frozen features, as their code does it
(``fair_self_supervision_benchmark/tools/svm``: ``svm_helper.py``,
``train_svm_kfold.py``, ``test_svm.py``, ``train_svm_low_shot.py``,
``extra_scripts/create_voc_low_shot_samples.py``; VISSL's
``svm_trainer.py`` and ``svm_low_shot_trainer.py`` do the same):

* features are flattened, then each row divided by its L2 norm plus
  ``1e-5``;
* scikit-learn's ``LinearSVC`` with squared hinge loss, L2 penalty, the
  dual solver, ``tol=1e-4``, ``max_iter=2000``, an intercept (scaling 1,
  regularised like a weight) and ``class_weight={1: 2, -1: 1}``;
* the cost of each class is the one of :data:`COSTS` (the paper's
  ``10^[-7, 2]`` and ``2^[-19, -4]``, in their order) with the best mean
  average precision over 3-fold cross-validation on trainval
  (``cross_val_score(..., cv=3, scoring='average_precision')``: folds
  stratified by the class's label, not shuffled; the first best cost wins
  a tie, as ``np.argmax``), and that class's SVM is refitted on the whole
  of trainval with it;
* training, cross-validation included, counts an image whose only objects
  of the class are ``difficult`` (target 0) as a negative; testing leaves
  it out;
* low-shot: for each ``k`` of :data:`SHOTS` and each of 5 samples, every
  class gets ``k`` positives and ``19 k`` negatives (``(C - 1) k``:
  images without the class, never a difficult one) drawn from trainval,
  each class on its own, the rest of trainval ignored for it; one SVM
  per cost, no cross-validation; the cost reported for ``k`` is the one
  with the best test mAP averaged over the samples (their
  ``aggregate_stats``: chosen on the test set), with the mean, standard
  deviation, minimum and maximum over the samples at it.

Test AP comes in the three forms of :mod:`voc_metrics` (``mAP``, the RotNet
paper's; ``mAP_11point``, the VOC2007 devkit's; ``mAP_all_points``, the
form Goyal et al.'s ``test_svm.py`` reports), over the test images not
ignored for the class.

Differences kept, none of which changes what is computed:

* **An exact smaller problem.** The dual problem ``LinearSVC`` solves
  (liblinear's coordinate descent) depends on the features only through
  the inner products of the training rows, the intercept's constant 1
  included. The rows ``a_i`` of trainval (``[x_i, 1]``, ``N x (D + 1)``)
  are replaced by the rows of ``R^T`` from the QR factorisation
  ``[x, 1]^T = Q R``: ``R^T R = a a^T`` exactly, ``R^T`` is ``N x N``
  lower triangular (a quarter of the non-zeros of 5,011 x 9,217, which is
  what liblinear's time grows with), and a weight ``z`` learned on it is
  the weight ``Q z`` on the original features (every solution lies in the
  span of the training rows). The SVMs are fitted without an intercept of
  their own on these rows. The same iterations to the same solution, up
  to rounding (decision values agree to about 1e-14, iteration counts are
  equal; measured on random 5,011 x 9,216 features: 0.3-0.9 s a fit
  instead of 0.7-1.8 s, after a 30 s factorisation per block).
  Cross-validation uses subsets of the same rows, whose inner products are
  equally exact; each low-shot sample (``20 k`` rows) is factorised again,
  to ``20 k x 20 k``.
* **Only the chosen SVM is refitted** on the whole of trainval (their
  code fits every cost, then uses one).
* **The classes are fitted in parallel processes** (``jobs``; VISSL uses
  threads); each fit is what it would be alone.
* **A fixed seed** for liblinear's random order of coordinates
  (``random_state=seed``; theirs draws one from NumPy's global state), so
  that a rerun gives the same numbers; and the low-shot samples are drawn
  by a NumPy generator seeded with it (theirs: Python's ``random``, not
  seeded), so they are other samples of the same kind.
"""

import contextlib
import dataclasses
import os
import tempfile
import time
import warnings
import zipfile
from typing import Any, Sequence

import joblib
import numpy as np
import scipy.linalg
from absl import logging
from ml_collections import config_dict
from scipy.linalg import lapack
from sklearn import exceptions as sklearn_exceptions
from sklearn import metrics as sklearn_metrics
from sklearn import model_selection
from sklearn import svm as sklearn_svm

from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.errors import first_line
from rotnet_jax.training import voc_metrics
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock

# The paper's costs (their README's list, to which svm_helper.parse_cost_list
# appends 0.5^4 .. 0.5^19), in their order: a tie goes to the first.
COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0) + tuple(
    0.5 ** power for power in range(4, 20))
FOLDS = 3
# Positives per class of the low-shot benchmark, and samples of each.
SHOTS = (1, 2, 4, 8, 16, 32, 64, 96)
SAMPLES = 5
# What configs/voc07_svm*.py files say (settings()'s `benchmark`).
BENCHMARK = 'voc07_svm'
# LinearSVC's settings in their code.
POSITIVE_WEIGHT = 2.0
TOLERANCE = 1e-4
MAX_ITERATIONS = 2000
# svm_helper.normalize_features: x / (||x|| + 1e-5).
NORM_EPSILON = 1e-5
# The three forms of mean AP reported (voc_metrics.mean_average_precision).
AP_FORMS = ('mAP', 'mAP_11point', 'mAP_all_points')


def normalize(features) -> np.ndarray:
  """Rows flattened and divided by their L2 norm plus ``1e-5``, float64."""
  features = np.asarray(features, np.float64)
  features = features.reshape(len(features), -1)
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return features / (norms + NORM_EPSILON)


def _augmented(features: np.ndarray) -> np.ndarray:
  """``[x, 1]`` (the intercept's constant, ``intercept_scaling=1``),
  ``[N, D + 1]``."""
  return np.concatenate([features, np.ones((len(features), 1))], axis=1)


class _Basis:
  """The exact smaller form of a problem's rows (module docstring).

  Attributes:
    rows: ``float64 [N, K]``, ``K = min(N, P)``, lower triangular, with
      ``rows @ rows.T == given @ given.T`` for the ``[N, P]`` rows given.
  """

  def __init__(self, given: np.ndarray):
    """`given`: ``[N, P]`` rows: ``[x, 1]`` of normalised trainval, or
    some rows of another basis (a low-shot sample). Overwritten (it may
    be hundreds of MB)."""
    transposed = np.asfortranarray(np.asarray(given, np.float64).T)
    (reflectors, self._tau), upper = scipy.linalg.qr(
        transposed, mode='raw', overwrite_a=True, check_finite=False)
    # With more rows than values (N > P), only P reflectors.
    self._reflectors = reflectors[:, :len(self._tau)]
    self.rows = np.ascontiguousarray(upper.T)

  def _apply(self, matrix: np.ndarray, transpose: bool) -> np.ndarray:
    """``Q @ matrix`` (or ``Q^T @ matrix``) with the full ``P``-square Q
    of the factorisation."""
    matrix = np.asfortranarray(matrix, np.float64)
    product, _, info = lapack.dormqr(
        'L', 'T' if transpose else 'N', self._reflectors, self._tau,
        matrix, lwork=64 * max(1, matrix.shape[1]))
    if info != 0:
      raise RuntimeError(f'LAPACK dormqr failed (info={info})')
    return product

  def weights(self, coefficients: np.ndarray) -> np.ndarray:
    """Weights ``[P, c]`` on the given rows' values of weights ``[K, c]``
    learned on :attr:`rows`."""
    padded = np.zeros((len(self._reflectors), coefficients.shape[1]))
    padded[:len(coefficients)] = coefficients
    return self._apply(padded, transpose=False)

  def project(self, other: np.ndarray) -> np.ndarray:
    """Rows ``[M, K]`` of other rows ``[M, P]`` (test images' ``[x, 1]``),
    whose products with weights learned on :attr:`rows` are their
    decision values."""
    return self._apply(np.asarray(other).T, transpose=True)[
        :self.rows.shape[1]].T


def _classifier(cost: float, seed: int) -> sklearn_svm.LinearSVC:
  """Their LinearSVC, without an intercept of its own: the basis rows
  hold it (module docstring)."""
  return sklearn_svm.LinearSVC(
      C=cost, class_weight={1: POSITIVE_WEIGHT, -1: 1.0},
      fit_intercept=False, penalty='l2', loss='squared_hinge', dual=True,
      tol=TOLERANCE, max_iter=MAX_ITERATIONS, random_state=seed)


def _fit(rows: np.ndarray, labels: np.ndarray, cost: float,
         seed: int) -> np.ndarray:
  """The weights ``[K]`` of one SVM (liblinear's convergence warning,
  which their code also meets at the largest costs, silenced)."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', sklearn_exceptions.ConvergenceWarning)
    return _classifier(cost, seed).fit(rows, labels).coef_[0]


def _train_class(rows: np.ndarray, labels: np.ndarray, costs, folds: int,
                 seed: int) -> tuple[np.ndarray, int, np.ndarray]:
  """Cross-validated AP of every cost, the best one's index, and the
  weights of the SVM refitted on every row with it."""
  rows = np.asarray(rows)
  splits = model_selection.StratifiedKFold(folds).split(rows, labels)
  cross_validated = np.zeros((folds, len(costs)))
  for fold, (fitted, held_out) in enumerate(splits):
    fitted_rows, held_out_rows = rows[fitted], rows[held_out]
    for index, cost in enumerate(costs):
      weights = _fit(fitted_rows, labels[fitted], cost, seed)
      # The 'average_precision' scorer of cross_val_score.
      cross_validated[fold, index] = sklearn_metrics.average_precision_score(
          labels[held_out] == 1, held_out_rows @ weights)
  mean = cross_validated.mean(axis=0)
  best = int(np.argmax(mean))
  return mean, best, _fit(rows, labels, costs[best], seed)


def _training_labels(targets: np.ndarray) -> np.ndarray:
  """SVM labels of trainval: 1 present, -1 otherwise (difficult too)."""
  return np.where(targets == 1, 1, -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class _Split:
  """Checked features (normalised) and targets of one split."""
  features: np.ndarray
  targets: np.ndarray


def _check_targets(targets, rows: int, what: str) -> np.ndarray:
  """`targets` as int8 ``[rows, C]`` of 1, 0 and -1."""
  targets = np.asarray(targets)
  if targets.ndim != 2 or len(targets) != rows or not targets.shape[1]:
    raise InputError(f'{what} targets of shape {targets.shape} for {rows} '
                     'images: expected [N, classes]')
  voc_metrics.check_target_values(targets, f'{what} ')
  return targets.astype(np.int8)


def _check_split(features, targets, what: str) -> _Split:
  features = np.asarray(features)
  if features.ndim < 2 or not len(features):
    raise InputError(f'{what} features of shape {features.shape}: expected '
                     '[N, ...] with N > 0')
  targets = _check_targets(targets, len(features), what)
  if not np.issubdtype(features.dtype, np.number):
    raise InputError(f'{what} features have dtype {features.dtype}: '
                     'expected numbers')
  finite = np.isfinite(features)
  if not finite.all():
    raise InputError(f'{what} features hold {int(np.sum(~finite))} NaN or '
                     'infinite values')
  return _Split(normalize(features), targets)


def _check_pair(train_features, train_targets, test_features,
                test_targets) -> tuple[_Split, _Split]:
  train = _check_split(train_features, train_targets, 'training')
  test = _check_split(test_features, test_targets, 'test')
  if train.features.shape[1] != test.features.shape[1]:
    raise InputError(f'training features have {train.features.shape[1]} '
                     f'values per image, test features '
                     f'{test.features.shape[1]}: expected the same block '
                     'of the same network')
  if train.targets.shape[1] != test.targets.shape[1]:
    raise InputError(f'training targets have {train.targets.shape[1]} '
                     f'classes, test targets {test.targets.shape[1]}')
  return train, test


def settings() -> config_dict.ConfigDict:
  """The benchmark's settings as a locked config: the defaults of the
  ``rotnet-svm`` flags, which a ``configs/voc07_svm*.py`` file changes.

  Keys: ``benchmark`` (always :data:`BENCHMARK`: what tells such a file
  from a run's config), ``blocks``, ``low_shot``, ``costs``, ``folds``,
  ``shots``, ``samples``, ``seed``.
  """
  config = config_dict.ConfigDict()
  config.benchmark = BENCHMARK
  config.blocks = ()  # Every block of the training file.
  config.low_shot = False
  config.costs = COSTS
  config.folds = FOLDS
  config.shots = SHOTS
  config.samples = SAMPLES
  config.seed = 0
  config.lock()
  return config


def check_settings(config) -> None:
  """Raises InputError unless `config` holds valid benchmark settings.

  The checks the benchmark itself makes of them, made before any file is
  read.
  """
  if config.get('benchmark') != BENCHMARK:
    raise InputError(f'config.benchmark={config.get("benchmark")!r}: a '
                     f'linear-SVM config says {BENCHMARK!r} (build it on '
                     'training.svm.settings())')
  _check_costs(config.costs)
  if config.folds < 2:
    raise InputError(f'config.folds={config.folds}: expected at least 2')
  shots = tuple(config.shots)
  if not shots or min(shots) < 1 or config.samples < 1:
    raise InputError(f'config.shots={list(shots)}, config.samples='
                     f'{config.samples}: expected positive numbers')


def _check_costs(costs) -> tuple[float, ...]:
  costs = tuple(float(c) for c in costs)
  if not costs or not all(np.isfinite(c) and c > 0 for c in costs):
    raise InputError(f'costs={list(costs)}: expected positive numbers')
  return costs


def _check_cross_validation(targets: np.ndarray, folds: int,
                           class_names: Sequence[str] = ()) -> None:
  """Raises InputError unless every class has `folds` positives and
  negatives in trainval (each fold must train and score both)."""
  if folds < 2:
    raise InputError(f'folds={folds}: expected at least 2')
  labels = _training_labels(np.asarray(targets))
  for c in range(labels.shape[1]):
    positives = int(np.sum(labels[:, c] == 1))
    negatives = len(labels) - positives
    if min(positives, negatives) < folds:
      raise InputError(
          f'class {_class_name(c, class_names)} has {positives} positive and '
          f'{negatives} negative training images: {folds}-fold '
          f'cross-validation needs at least {folds} of each')


def _class_name(index: int, class_names: Sequence[str]) -> str:
  if index < len(class_names):
    return f'{index} ({class_names[index]})'
  return str(index)


def _parallel(jobs: int):
  """Results in order, each as soon as it and those before are done."""
  return joblib.Parallel(n_jobs=jobs, return_as='generator')


@contextlib.contextmanager
def _shared(array: np.ndarray, jobs: int):
  """`array`, or with several jobs a read-only memory map of a copy that
  the worker processes open by its file name (joblib sends a memory map
  as its name: no copy of, nor hash over, hundreds of MB per task)."""
  if jobs == 1:
    yield array
    return
  with tempfile.TemporaryDirectory(prefix='rotnet_svm_') as folder:
    path = os.path.join(folder, 'rows.npy')
    np.save(path, array)
    yield np.load(path, mmap_mode='r')


def _summary(metrics: dict) -> dict:
  return {key: (value.tolist() if isinstance(value, np.ndarray)
                else float(value)) for key, value in metrics.items()}


def train_and_test(train_features, train_targets, test_features,
                   test_targets, *, costs: Sequence[float] = COSTS,
                   folds: int = FOLDS, jobs: int = 1, seed: int = 0,
                   class_names: Sequence[str] = ()) -> dict[str, Any]:
  """The full VOC07 benchmark of one block (module docstring).

  Args:
    train_features: ``[N, ...]`` trainval features (flattened here).
    train_targets: ``[N, C]`` of 1 (present), 0 (difficult), -1 (absent).
    test_features, test_targets: the test split's, likewise.
    costs: the costs cross-validated.
    folds: cross-validation folds.
    jobs: processes fitting classes at once (1: this one).
    seed: liblinear's order of coordinates.
    class_names: for messages.

  Returns:
    ``{'mAP', 'mAP_11point', 'mAP_all_points'}`` (test, over the classes
    with a test positive), ``{'ap', 'ap_11point', 'ap_all_points'}`` (per
    class, NaN without a test positive), ``chosen_cost`` (per class),
    ``cv_ap`` (per class, the mean cross-validated AP of each cost),
    ``costs``, ``test_scores`` (``float64 [M, C]``, the SVMs' decision
    values) and ``seconds``.

  Raises:
    InputError: bad shapes or values, a train/test mismatch, bad costs,
      or a class with fewer than `folds` positives or negatives.
  """
  start = time.perf_counter()
  costs = _check_costs(costs)
  train, test = _check_pair(train_features, train_targets, test_features,
                            test_targets)
  _check_cross_validation(train.targets, folds, class_names)
  labels = _training_labels(train.targets)
  basis = _Basis(_augmented(train.features))
  num_classes = labels.shape[1]
  cv_ap = np.zeros((num_classes, len(costs)))
  chosen = np.zeros(num_classes, np.int64)
  coefficients = np.zeros((basis.rows.shape[1], num_classes))
  with _shared(basis.rows, jobs) as rows:
    results = _parallel(jobs)(
        joblib.delayed(_train_class)(rows, labels[:, c], costs, folds, seed)
        for c in range(num_classes))
    for c, (mean, best, weights) in enumerate(results):
      cv_ap[c], chosen[c], coefficients[:, c] = mean, best, weights
      logging.info('SVM class %s: cost %g (cross-validated AP %.4f) | %ds',
                   _class_name(c, class_names), costs[best], mean[best],
                   time.perf_counter() - start)
  test_scores = _augmented(test.features) @ basis.weights(coefficients)
  metrics = voc_metrics.mean_average_precision(test_scores, test.targets)
  return dict(_summary(metrics), costs=list(costs),
              chosen_cost=[costs[i] for i in chosen], cv_ap=cv_ap.tolist(),
              test_scores=test_scores,
              seconds=time.perf_counter() - start)


def draw_low_shot(targets, *, shots: Sequence[int] = SHOTS,
                  samples: int = SAMPLES, seed: int = 0,
                  class_names: Sequence[str] = ()
                  ) -> dict[tuple[int, int], list[np.ndarray]]:
  """The training images of every low-shot sample.

  For each sample and ``k``, each class independently gets ``k`` images
  where it is present and ``(C - 1) k`` where it is absent (never one
  where it is only difficult), drawn without replacement
  (``create_voc_low_shot_samples.py``; a NumPy generator seeded with
  `seed` rather than Python's ``random``).

  Returns:
    ``{(sample, k): [int64 indices of class c, sorted] for c}``, samples
    numbered from 1.

  Raises:
    InputError: bad `shots` or `samples`, or a class with fewer present or
      absent images than the largest ``k`` needs.
  """
  targets = np.asarray(targets)
  shots = tuple(int(k) for k in shots)
  if not shots or min(shots) < 1 or samples < 1:
    raise InputError(f'shots={list(shots)}, samples={samples}: expected '
                     'positive numbers of positives per class and samples')
  num_classes = targets.shape[1]
  most = max(shots)
  for c in range(num_classes):
    present = int(np.sum(targets[:, c] == 1))
    absent = int(np.sum(targets[:, c] == -1))
    if present < most or absent < (num_classes - 1) * most:
      raise InputError(
          f'class {_class_name(c, class_names)} has {present} present and '
          f'{absent} absent training images: k={most} low-shot samples '
          f'need {most} and {(num_classes - 1) * most} (pass smaller shots)')
  rng = np.random.default_rng(seed)
  drawn = {}
  for sample in range(1, samples + 1):
    for k in shots:
      drawn[sample, k] = [np.sort(np.concatenate([
          rng.choice(np.flatnonzero(targets[:, c] == 1), k, replace=False),
          rng.choice(np.flatnonzero(targets[:, c] == -1),
                     (num_classes - 1) * k, replace=False)]))
                          for c in range(num_classes)]
  return drawn


def aggregate_samples(values, costs: Sequence[float]) -> dict[str, float]:
  """One ``k``'s low-shot result from its test mAPs ``[sample, cost]``:
  the cost of the best mean over the samples (their ``aggregate_stats``,
  a tie to the first), and the mean, standard deviation (``np.std``),
  minimum and maximum over the samples at it."""
  values = np.asarray(values, np.float64)
  best = int(np.argmax(values.mean(axis=0)))
  at_best = values[:, best]
  return {'mean': float(at_best.mean()), 'std': float(at_best.std()),
          'min': float(at_best.min()), 'max': float(at_best.max()),
          'cost': float(costs[best])}


def _train_low_shot(rows: np.ndarray, indices: np.ndarray,
                    labels: np.ndarray, costs, seed: int) -> np.ndarray:
  """Weights ``[K, len(costs)]`` on `rows` of one class's SVMs trained on
  the rows at `indices`, one per cost.

  A sample's few rows have a smaller exact form of their own (``m x m``
  for m rows instead of ``m x K``): its SVMs are fitted on it.
  """
  sample = _Basis(np.asarray(rows[indices]))
  return sample.weights(np.stack(
      [_fit(sample.rows, labels, cost, seed) for cost in costs], axis=1))


def low_shot(train_features, train_targets, test_features, test_targets,
             *, shots: Sequence[int] = SHOTS, samples: int = SAMPLES,
             seed: int = 0, costs: Sequence[float] = COSTS, jobs: int = 1,
             class_names: Sequence[str] = ()) -> dict[str, Any]:
  """The low-shot benchmark of one block (module docstring).

  Args: as :func:`train_and_test`, and
    shots: positives per class (``k``).
    samples: independent samples of each ``k``.
    seed: the samples' draw and liblinear's order of coordinates.

  Returns:
    ``{'shots': {k: {form: {'mean', 'std', 'min', 'max', 'cost'}}},
    'per_cost': {k: {form: [sample][cost] test mAP}}, 'costs', 'samples',
    'seconds'}`` for each form of :data:`AP_FORMS`; ``std`` is over the
    samples (``np.std``), at the cost of the best mean, chosen for each
    form on its own.

  Raises:
    InputError: as :func:`train_and_test` and :func:`draw_low_shot`.
  """
  start = time.perf_counter()
  costs = _check_costs(costs)
  train, test = _check_pair(train_features, train_targets, test_features,
                            test_targets)
  drawn = draw_low_shot(train.targets, shots=shots, samples=samples,
                        seed=seed, class_names=class_names)
  labels = _training_labels(train.targets)
  basis = _Basis(_augmented(train.features))
  test_rows = basis.project(_augmented(test.features))
  num_classes = labels.shape[1]
  shots = tuple(int(k) for k in shots)
  tasks = [(key, c) for key in drawn for c in range(num_classes)]
  scores = {key: np.zeros((len(costs), len(test_rows), num_classes))
            for key in drawn}
  with _shared(basis.rows, jobs) as rows:
    results = _parallel(jobs)(
        joblib.delayed(_train_low_shot)(
            rows, drawn[key][c], labels[drawn[key][c], c], costs, seed)
        for key, c in tasks)
    for (key, c), weights in zip(tasks, results):
      scores[key][:, :, c] = (test_rows @ weights).T
      if c == num_classes - 1:
        logging.info('low-shot sample %d, k=%d: done | %ds', *key,
                     time.perf_counter() - start)
  table = {form: np.zeros((samples, len(shots), len(costs)))
           for form in AP_FORMS}
  for (sample, k), by_cost in scores.items():
    for index, cost_scores in enumerate(by_cost):
      metrics = voc_metrics.mean_average_precision(cost_scores, test.targets)
      for form in AP_FORMS:
        table[form][sample - 1, shots.index(k), index] = metrics[form]
  summary, per_cost = {}, {}
  for position, k in enumerate(shots):
    summary[k] = {form: aggregate_samples(table[form][:, position], costs)
                  for form in AP_FORMS}
    per_cost[k] = {form: table[form][:, position].tolist()
                   for form in AP_FORMS}
  return {'shots': summary, 'per_cost': per_cost, 'costs': list(costs),
          'samples': samples, 'seconds': time.perf_counter() - start}


# benchmark_files's argument `low_shot` hides the function there.
_run_low_shot = low_shot


# Reading extract's files.


def _npz_arrays(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """``{name: (shape, dtype)}`` of an ``.npz`` file, from its headers."""
  arrays = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for name in archive.namelist():
        if not name.endswith('.npy'):
          continue
        with archive.open(name) as f:
          version = np.lib.format.read_magic(f)
          if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(f)
          else:
            header = np.lib.format.read_array_header_2_0(f)
        arrays[name[:-len('.npy')]] = (tuple(header[0]), header[2])
  except FileNotFoundError as e:
    raise MissingInputError(f'{path} does not exist (expected a .npz file '
                            'written by python -m rotnet_jax.extract)') from e
  except (OSError, zipfile.BadZipFile, ValueError) as e:
    raise InputError(f'{path} is not a readable .npz file '
                     f'({first_line(e)})') from e
  return arrays


@dataclasses.dataclass(frozen=True)
class _FeatureFile:
  """What extract's file holds: block shapes, targets, class names."""
  path: str
  shapes: dict[str, tuple[int, ...]]
  targets: np.ndarray
  class_names: tuple[str, ...]

  def features(self, block: str) -> np.ndarray:
    with np.load(self.path, allow_pickle=False) as saved:
      return saved[block]


def _open_features(path: str, what: str) -> _FeatureFile:
  full = filesystem.absolute(path)
  arrays = _npz_arrays(full)
  if 'targets' not in arrays:
    extra = (" (it has 'labels': features of a dataset of classes; extract "
             'VOC07, e.g. --dataset=<VOCdevkit> --split=trainval)'
             if 'labels' in arrays else '')
    raise InputError(f'{what}={path!r} has no VOC classification '
                     f"'targets'{extra}")
  if 'blocks' not in arrays:
    raise InputError(f"{what}={path!r} has no 'blocks' list: expected a "
                     'file written by python -m rotnet_jax.extract')
  with np.load(full, allow_pickle=False) as saved:
    blocks = [str(b) for b in saved['blocks']]
    targets = saved['targets']
    class_names = tuple(str(n) for n in saved['class_names']) if (
        'class_names' in arrays) else ()
  missing = [b for b in blocks if b not in arrays]
  if missing:
    raise InputError(f'{what}={path!r} lists blocks {missing} but holds no '
                     'array of them')
  shapes = {b: arrays[b][0] for b in blocks}
  for block, shape in shapes.items():
    if len(shape) < 2 or shape[0] != len(targets):
      raise InputError(f'{what}={path!r}: block {block} has shape {shape} '
                       f'for {len(targets)} targets: expected [N, ...]')
  targets = _check_targets(targets, len(targets), f'{what}={path!r}')
  return _FeatureFile(full, shapes, targets, class_names)


def _feature_size(shape) -> int:
  return int(np.prod(shape[1:]))


def _check_blocks(train: _FeatureFile, test: _FeatureFile,
                  blocks: Sequence[str]) -> tuple[str, ...]:
  """The blocks to run (default: the training file's), each in both
  files with the same number of values per image."""
  blocks = tuple(blocks) or tuple(train.shapes)
  for block in blocks:
    for what, opened in (('--train', train), ('--test', test)):
      if block not in opened.shapes:
        raise InputError(f'block {block!r} is not in {what}='
                         f'{opened.path!r}, which has '
                         f'{", ".join(opened.shapes)}')
    sizes = [_feature_size(f.shapes[block]) for f in (train, test)]
    if sizes[0] != sizes[1]:
      raise InputError(
          f'block {block!r} has {sizes[0]} values per image in --train '
          f'({train.shapes[block]}) and {sizes[1]} in --test '
          f'({test.shapes[block]}): extract both splits with the same '
          'network and --pool')
  if train.targets.shape[1] != test.targets.shape[1] or (
      train.class_names and test.class_names and
      train.class_names != test.class_names):
    raise InputError(f'--train has {train.targets.shape[1]} classes '
                     f'{list(train.class_names)}, --test '
                     f'{test.targets.shape[1]} {list(test.class_names)}: '
                     'expected the same VOC classes')
  return blocks


def _jsonable(value):
  """`value` with arrays as lists and NaN as None (strict JSON)."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if np.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def benchmark_files(train_npz: str, test_npz: str, *,
                    blocks: Sequence[str] = (), low_shot: bool = False,
                    costs: Sequence[float] = COSTS, folds: int = FOLDS,
                    shots: Sequence[int] = SHOTS, samples: int = SAMPLES,
                    seed: int = 0, jobs: int = 1, out: str | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
  """The benchmark of every block of two files of ``extract``.

  Args:
    train_npz, test_npz: ``.npz`` files of ``python -m rotnet_jax.extract``
      of VOC07 ``trainval`` and ``test`` (with ``targets``), e.g. with
      ``--pool=svm``.
    blocks: the blocks to run (default: every block of `train_npz`).
    low_shot: also run :func:`low_shot` (20,800 SVMs a block).
    costs, folds, shots, samples, seed, jobs: see :func:`train_and_test`
      and :func:`low_shot`.
    out: a ``.json`` file to write the results to (atomically), or None.
    overwrite: whether `out` may be replaced.

  Returns:
    ``{'train', 'test', 'classes', 'costs', 'blocks': {block:
    {'features', 'full': train_and_test's (without test_scores), and
    'low_shot': low_shot's}}}``, NaN as None.

  Raises:
    InputError, MissingInputError: a missing or unreadable file, one
      without VOC ``targets``, a block missing from a file (naming the
      blocks it has), blocks of other sizes in the two files, other
      classes, or another bad setting; all before anything is computed
      or written. An output inside a workdir a run holds (also checked
      just before writing).
  """
  full_out = None
  if out is not None:
    full_out = filesystem.check_output_file(out, what='--out',
                                            suffix='.json',
                                            overwrite=overwrite)
    workdir_lock.check_not_inside_locked(full_out, '--out')
  costs = _check_costs(costs)
  if jobs < 1:
    raise InputError(f'jobs={jobs}: expected a positive number of '
                     'processes')
  train = _open_features(train_npz, '--train')
  test = _open_features(test_npz, '--test')
  blocks = _check_blocks(train, test, blocks)
  _check_cross_validation(train.targets, folds, train.class_names)
  if low_shot:
    draw_low_shot(train.targets, shots=shots, samples=samples, seed=seed,
                  class_names=train.class_names)
  results = {'train': train.path, 'test': test.path,
             'classes': list(train.class_names), 'costs': list(costs),
             'blocks': {}}
  common = dict(costs=costs, jobs=jobs, seed=seed,
                class_names=train.class_names)
  for block in blocks:
    train_features = train.features(block)
    test_features = test.features(block)
    logging.info('SVM benchmark of %s: %d trainval and %d test images, %d '
                 'values each', block, len(train_features),
                 len(test_features), _feature_size(train_features.shape))
    scored = train_and_test(train_features, train.targets, test_features,
                            test.targets, folds=folds, **common)
    del scored['test_scores']
    entry = {'features': _feature_size(train_features.shape),
             'full': scored}
    logging.info('%s: mAP %.2f%%, 11-point %.2f%% (%ds)', block,
                 100 * scored['mAP'], 100 * scored['mAP_11point'],
                 scored['seconds'])
    if low_shot:
      entry['low_shot'] = _run_low_shot(
          train_features, train.targets, test_features, test.targets,
          shots=shots, samples=samples, **common)
    results['blocks'][block] = entry
  results = _jsonable(results)
  if full_out is not None:
    # Again: the benchmark took minutes, a run may have started there.
    workdir_lock.check_not_inside_locked(full_out, '--out')
    try:
      filesystem.write_json(full_out, results)
    except OSError as e:
      raise InputError(f'cannot write --out={out!r}: {first_line(e)}') from e
  return results
