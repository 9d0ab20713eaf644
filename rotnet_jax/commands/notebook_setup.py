"""What the notebooks in ``notebooks/`` share: the quick switch and the runtime.

    from rotnet_jax.commands import notebook_setup as nb
    nb.QUICK            # ROTNET_NOTEBOOK_QUICK=1: tiny settings (tests, CI)
    nb.runtime()        # 'gpu', 'tpu' or 'cpu': what JAX runs on
    nb.workdir('quickstart')  # where a notebook's runs go
    nb.log_progress()   # the runs' progress lines, without Orbax's

Every runner (Colab, Jupyter, ``tests/test_notebooks.py``) executes the
notebooks the same way; only these environment variables change them:

* ``ROTNET_NOTEBOOK_QUICK=1``: tiny settings that finish in minutes on a
  CPU, on the bundled digits (no network needed).
* ``ROTNET_NOTEBOOK_WORKDIR=DIR``: the folder the notebooks' runs are
  written to (default: ``rotnet_notebooks`` in the system's temp folder;
  quick runs in its ``quick/`` subfolder).
"""

import os
import tempfile

QUICK_ENV = 'ROTNET_NOTEBOOK_QUICK'
WORKDIR_ENV = 'ROTNET_NOTEBOOK_WORKDIR'

# Tiny settings, for tests and CI: on unless the variable is unset, '' or 0.
QUICK = os.environ.get(QUICK_ENV, '').strip() not in ('', '0')


def runtime() -> str:
  """``'gpu'``, ``'tpu'`` or ``'cpu'``: the platform JAX computes on."""
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.default_backend()
  return platform if platform in ('gpu', 'tpu') else 'cpu'


def describe_runtime() -> str:
  """One line: JAX's version, the platform and its devices."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f'JAX {jax.__version__} on {runtime().upper()}: {len(devices)} '
          f"device(s) ({', '.join(kinds)})"
          + ('; quick test settings (ROTNET_NOTEBOOK_QUICK=1)' if QUICK
             else ''))


def log_progress() -> None:
  """Shows the runs' progress lines (absl INFO) and hides Orbax's chatter."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  cli.quiet_library_logs()


def workdir(name: str) -> str:
  """``$ROTNET_NOTEBOOK_WORKDIR/name`` (default: under the temp folder).

  Quick runs go to a folder of their own (``quick/name``): runs resume from
  their workdir, and a full run must not resume a tiny one.
  """
  root = os.environ.get(WORKDIR_ENV) or os.path.join(
      tempfile.gettempdir(), 'rotnet_notebooks')
  return os.path.join(root, 'quick', name) if QUICK else os.path.join(
      root, name)

