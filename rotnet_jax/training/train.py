"""The one driver of every run: ``train_and_evaluate(config, workdir)``.

Reads top to bottom: check the config, build the mesh and both data
sources, the objective of ``config.mode`` (the RotNet pretext task,
supervised classes, or heads on a restored backbone), the optimiser and the
compiled steps, then hand them to the epoch loop and write
``results.json``. Everything that can fail on bad input (config, workdir,
batch size, data, the pretrained checkpoint) fails before the workdir is
touched; a run with nothing left to train writes nothing.
"""

import errno
from typing import Any

import jax

from rotnet_jax import data as data_lib
from rotnet_jax import parallel
from rotnet_jax.data import datasets
from rotnet_jax.errors import InputError
from rotnet_jax.training import knn
from rotnet_jax.training import loop
from rotnet_jax.training import objectives
from rotnet_jax.training import optim
from rotnet_jax.training import steps as steps_lib
from rotnet_jax.training import validation
from rotnet_jax.training.steps import TrainState
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files


def results(config, objective: objectives.Objective,
            best: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The content of ``results.json``.

  Args:
    config: the run's config (its settings are recorded).
    objective: what was trained (its per-head fields are added).
    best: per head, the records ``loop.fit`` returns.

  Returns:
    The run's settings and, per head, the final test score and the best
    one (selected on the test set, as the official code did; the final one
    is the honest number): ``final_test_accuracy`` and
    ``best_test_accuracy_test_selected`` for a classifier,
    ``final_test_mAP`` ... for VOC classification, ``final_test_mIoU`` ...
    for segmentation, with ``metric`` naming it.
  """
  fields = objective.describe()
  heads = []
  for head, record in best.items():
    name = record.get('metric', 'accuracy')
    heads.append(dict({
        'head': head, 'metric': name,
        f'final_test_{name}': record[f'final_{name}'],
        'final_epoch': record['final_epoch'],
        f'best_test_{name}_test_selected': record[f'best_{name}'],
        'best_epoch_test_selected': record['best_epoch'],
        'test_samples': record['count']}, **fields.get(head, {})))
  return dict(run_fields(config), num_epochs=config.num_epochs,
              complete=all(r['final_epoch'] == config.num_epochs
                           for r in best.values()),
              heads=heads)


def run_fields(config) -> dict[str, Any]:
  """The settings every ``results.json`` records, whatever was run."""
  return {
      'experiment': config.experiment, 'mode': config.mode,
      'dataset': config.dataset, 'pipeline': config.pipeline,
      'seed': config.seed, 'model_width': config.model.width,
      'num_train_examples': config.num_train_examples,
      'examples_per_class': config.examples_per_class,
      'subset_order': datasets.subset_order(config)}


def train_and_evaluate(config, workdir: str, *, mesh=None
                       ) -> TrainState | dict[str, Any]:
  """Trains what ``config.mode`` asks for and evaluates it on the test set.

  Args:
    config: a config built on ``config_schema.defaults()`` (see
      ``configs/``).
    workdir: output folder: ``checkpoints/``, ``config.json``,
      ``metrics.jsonl``, ``results.json``, ``tensorboard/``. Re-running with
      the same workdir resumes from its latest checkpoint.
    mesh: the data mesh (default: every device of every process).

  Returns:
    The final train state: for evaluation runs the heads (and the backbone
    when fine-tuning) under ``params['heads']`` / ``params['backbone']``.
    A training-free evaluation (``head='knn'``) trains nothing and returns
    the content of its ``results.json`` (``knn.evaluate``).
  """
  config = validation.check_run(config, workdir)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  if config.head == knn.HEAD_TYPE and config.mode == 'evaluate':
    # Trains nothing: no epochs, no checkpoint, and the run is complete.
    network, heads = knn.evaluate(config, mesh)
    summary = dict(run_fields(config), num_epochs=0, complete=True,
                   heads=heads)
    if jax.process_index() == 0:
      filesystem.resolve(workdir).mkdir(parents=True, exist_ok=True)
    # Written under the lock, as a training run writes: a run that started
    # in this workdir meanwhile stops this one here.
    with workdir_lock.lock(workdir):
      run_files.write_config(workdir, config, network)
      run_files.write_results(workdir, summary)
    return summary
  train_source = data_lib.make_source(config, config.train_split, mesh,
                                      train=True)
  test_source = data_lib.make_source(config, config.test_split, mesh,
                                     train=False)
  objective = objectives.from_config(config, train_source.num_classes, mesh,
                                     train_source.class_names, train_source)
  tx = optim.from_config(config, train_source.steps_per_epoch)
  state = steps_lib.init_state(objective, tx, config.seed, mesh)
  steps = steps_lib.compile_steps(config, objective, tx, mesh, train_source,
                                  test_source)
  try:
    state, best = loop.fit(
        config, workdir, network=objective.network, state=state,
        steps=steps, train_source=train_source, test_source=test_source,
        images_per_step=config.batch_size * objective.inputs_per_image,
        # results.json while the run still holds the workdir's lock.
        on_complete=lambda best: run_files.write_results(
            workdir, results(config, objective, best)))
  except Exception as e:  # pylint: disable=broad-except
    if not _disk_full(e):
      raise
    # The space ran out during a save (another process filled the disk):
    # say so in one line, as loop.check_disk_space does beforehand.
    loop.check_disk_space(workdir, state)
    raise InputError(f'no space left on the device of --workdir={workdir}: '
                     'free some space and rerun the same command.') from None
  return state


def _disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is ENOSPC."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True  # Orbax and TensorStore re-raise it as text.
    error = error.__cause__ or error.__context__
  return False

