"""``rotnet-report`` / ``python -m rotnet_jax.report``: our results next
to the paper's.

    python -m rotnet_jax.report /tmp/rotnet_repro
    python -m rotnet_jax.report --paper [table1 ...]   # the paper's tables

Exit status 0: a table was printed; 1: no results found; 2: a bad command
line. What the table shows: ``rotnet_jax.experiments.report``.
"""

import sys

from rotnet_jax.commands import cli
from rotnet_jax.errors import InputError
from rotnet_jax.experiments import report
from rotnet_jax.workdir import filesystem


def main(argv) -> int:
  """Prints the table of ``argv[1]``; returns the exit status.

  0: a table was printed (files that could not be read are named on
  stderr and left out); 1: no results found; 2: bad command line.
  ``--paper`` prints the paper's tables (all, or those named after it)
  with every row's sources.
  """
  if argv[1:2] == ['--paper']:
    try:
      print(report.paper_tables(argv[2:] or None))
    except InputError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    return 0
  if len(argv) != 2:
    print('error: give one folder: python -m rotnet_jax.report '
          f'RESULTS_DIR, or --paper [TABLE ...] (got {argv[1:]})',
          file=sys.stderr)
    return 2
  root = argv[1]
  if not filesystem.resolve(root).is_dir():
    print(f'error: {root} is not a folder: pass the --root of '
          'rotnet_jax.reproduce (or any folder holding results.json files)',
          file=sys.stderr)
    return 2
  skipped = []
  rows = report.collect(root, skipped)
  for path, reason in skipped:
    print(f'warning: skipped {path}: {reason}', file=sys.stderr)
  if not rows:
    print(f'error: no readable results.json under {root}', file=sys.stderr)
    return 1
  print(report.markdown_table(rows))
  return 0


def run() -> None:
  """The console-script entry point (``rotnet-report``)."""
  with cli.one_line_interrupts():
    sys.exit(main(sys.argv))


if __name__ == '__main__':
  run()
