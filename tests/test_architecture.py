"""The package's shape: what may import what (docs/architecture.md).

Read from the source with ``ast`` (nothing is imported), counting imports
inside functions too: a lazy import is still a dependency.
"""

import ast
import collections
import os

import pytest

from helpers import REPO_ROOT

PACKAGE = 'rotnet_jax'

# Bottom up. A module may import the layers below its own, and modules of
# its own folder; never a layer above, nor another folder of its layer.
LAYERS = {
    'errors': 0,
    'config_schema': 1, 'parallel': 1, 'boxes': 1,
    'workdir': 2,
    'models': 3, 'data': 3,
    'weights': 4,
    'training': 5, 'inference': 5,
    'experiments': 6,
    'commands': 7,
    # The `python -m rotnet_jax.<command>` aliases of commands/.
    'reproduce': 8, 'report': 8, 'plot': 8, 'benchmark': 8,
    'import_torch': 8, 'export': 8, 'extract': 8, 'svm': 8,
    'proposals': 8,
}

# rotnet_jax/__init__.py: `rotnet_jax.load`, a lazy door to inference.
FACADE = {PACKAGE: {f'{PACKAGE}.inference'}}

# One module per weights format; each reads its own files only.
WEIGHTS_FORMATS = ('workdir_format', 'safetensors_format', 'torch_format')


def _modules() -> dict[str, str]:
  """``{dotted module name: file}`` of every module of the package."""
  modules = {}
  for folder, _, names in os.walk(os.path.join(REPO_ROOT, PACKAGE)):
    for name in names:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      dotted = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, '.')
      modules[dotted.removesuffix('.__init__')] = path
  return modules


def _imports(modules: dict[str, str]) -> dict[str, set[str]]:
  """``{module: package modules it imports}``, function-level included."""
  graph = collections.defaultdict(set)
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and (
          node.module.split('.')[0] == PACKAGE):
        for alias in node.names:
          name = f'{node.module}.{alias.name}'
          graph[module].add(name if name in modules else node.module)
      elif isinstance(node, ast.Import):
        graph[module].update(a.name for a in node.names
                             if a.name.split('.')[0] == PACKAGE)
    graph[module].discard(module)
  return graph


MODULES = _modules()
GRAPH = _imports(MODULES)


def _part(module: str) -> str:
  """The folder (or top-level module) `module` belongs to."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def test_every_part_of_the_package_has_a_layer():
  parts = {_part(m) for m in MODULES} - {''}
  assert parts == set(LAYERS), (
      'a new folder or top-level module: give it a layer in LAYERS and in '
      'docs/architecture.md')


def test_imports_only_run_downward():
  upward = []
  for module, imported in sorted(GRAPH.items()):
    for target in sorted(imported - FACADE.get(module, set())):
      if _part(target) == _part(module):
        continue  # Within one folder.
      if _part(target) == '' or LAYERS[_part(target)] >= LAYERS[_part(module)]:
        upward.append(f'{module} -> {target}')
  assert not upward, 'imports that do not run downward:\n' + '\n'.join(upward)


def test_no_import_cycles():
  cycles = []
  state = {}  # module -> 'open' while on the stack, 'done' after.
  stack = []

  def visit(module):
    state[module] = 'open'
    stack.append(module)
    for target in sorted(GRAPH.get(module, ())):
      if state.get(target) == 'open':
        cycles.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[module] = 'done'

  for module in sorted(MODULES):
    if module not in state:
      visit(module)
  assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c)
                                                    for c in cycles)


def test_the_library_never_imports_a_command():
  offenders = [f'{m} -> {t}' for m, targets in sorted(GRAPH.items())
               for t in sorted(targets)
               if _part(t) == 'commands' and LAYERS[_part(m)] < 7]
  assert not offenders, offenders


@pytest.mark.parametrize('name', WEIGHTS_FORMATS)
def test_a_weights_format_reads_only_its_own_format(name):
  module = f'{PACKAGE}.weights.{name}'
  assert module in MODULES, f'{module} is missing'
  inside = {t for t in GRAPH[module] if _part(t) == 'weights'}
  assert inside <= {f'{PACKAGE}.weights.types'}, (
      f'{module} imports {sorted(inside)}: a format module imports only '
      'the weights type (and the layers below)')
