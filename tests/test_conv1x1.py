"""1x1 convolutions as channel products: the same network in either form.

``models.layers.conv`` computes a 1x1 convolution as ``lax.conv`` or as a
matrix product over channels (``layers.conv1x1_form``: the product on CPU,
where XLA's 1x1 convolution is slow). Both forms must hold the same
parameters and compute the same function, so checkpoints and exported
files move between them.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import digits
from rotnet_jax.errors import InputError
from rotnet_jax.models import heads
from rotnet_jax.models import layers
from rotnet_jax.training import benchmark
from rotnet_jax.training import train
from rotnet_jax.weights import export
import rotnet_jax

# Odd shapes: batch 3, 5x7 pixels, 17 -> 13 channels (no square kernel, so
# a transposed kernel cannot go unnoticed).
X_SHAPE = (3, 5, 7, 17)
OUT_CHANNELS = 13
# Bounds of max |difference| / max |value|: the two forms sum the same
# products in different orders; bfloat16 rounds the result to 8 bits.
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
NIN_SPEC = {'name': 'nin', 'num_classes': 4, 'num_blocks': 3,
            'width': 1 / 8, 'image_size': 32}


def _assert_close(actual, expected, tolerance, what=''):
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape, what
  scale = np.abs(expected).max()
  error = np.abs(actual - expected).max()
  assert error <= tolerance * scale, (
      f'{what}: max |difference| {error:.3g} > {tolerance} x {scale:.3g}')


def _assert_trees_close(actual, expected, tolerance):
  paths = jax.tree_util.tree_flatten_with_path(expected)[0]
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for (path, value), other in zip(paths, jax.tree.leaves(actual)):
    _assert_close(other, value, tolerance, jax.tree_util.keystr(path))


def _uses_matmul(module: nnx.Module) -> list[bool]:
  """Whether each convolution of `module` is a channel product."""
  return [conv.conv_general_dilated is layers.channel_product_conv
          for _, conv in nnx.iter_graph(module)
          if isinstance(conv, nnx.Conv)]


@pytest.fixture
def product_calls(monkeypatch):
  """Counts the calls of the channel product in modules built from now
  on (``layers.conv`` installs the module-level function it finds)."""
  calls = []
  original = layers.channel_product_conv

  def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(layers, 'channel_product_conv', counting)
  return calls


def _in_form(form, build):
  with layers.conv1x1(form):
    return build()


def _value_and_grads(module, x, weights, train_mode=None):
  """`module`'s output, and the gradients of a weighted sum of it with
  respect to every parameter and the input."""

  def loss(model, x):
    out = model(x) if train_mode is None else model(x, train=train_mode)[0]
    return jnp.sum(out.astype(jnp.float32) * weights), out

  # Jitted: op by op, the NIN's backward pass takes half a minute.
  grad_fn = nnx.jit(nnx.value_and_grad(
      loss, argnums=(nnx.DiffState(0, nnx.Param), 1), has_aux=True))
  (_, out), (param_grads, x_grad) = grad_fn(module, x)
  return out, (nnx.to_pure_dict(param_grads), x_grad)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16],
                         ids=['float32', 'bfloat16'])
@pytest.mark.parametrize('use_bias', [False, True], ids=['no_bias', 'bias'])
def test_matmul_equals_conv_forward_and_gradients(dtype, use_bias):
  def build():
    return layers.conv(X_SHAPE[-1], OUT_CHANNELS, 1, use_bias=use_bias,
                       bias_init=jax.nn.initializers.normal(1.0),
                       dtype=dtype, rngs=nnx.Rngs(0))

  convs = {form: _in_form(form, build) for form in layers.CONV1X1_FORMS}
  assert _uses_matmul(convs['conv']) == [False]
  assert _uses_matmul(convs['matmul']) == [True]
  x = jax.random.normal(jax.random.key(1), X_SHAPE).astype(dtype)
  weights = jax.random.normal(jax.random.key(2), X_SHAPE[:-1] + (OUT_CHANNELS,))
  results = {form: _value_and_grads(conv, x, weights)
             for form, conv in convs.items()}
  (out, grads), (conv_out, conv_grads) = results['matmul'], results['conv']
  assert out.dtype == conv_out.dtype == dtype
  assert out.shape == X_SHAPE[:-1] + (OUT_CHANNELS,)
  _assert_close(out, conv_out, TOLERANCE[dtype], 'output')
  _assert_trees_close(grads, conv_grads, TOLERANCE[dtype])
  # And both are the convolution: a product over channels, plus the bias.
  kernel = np.asarray(convs['conv'].kernel[...], np.float64)[0, 0]
  expected = np.asarray(x, np.float64) @ kernel
  if use_bias:
    expected += np.asarray(convs['conv'].bias[...], np.float64)
  _assert_close(conv_out, expected, TOLERANCE[dtype], 'conv vs numpy')


def test_only_plain_1x1_convolutions_become_products():
  def conv(*args, **kwargs):
    return nnx.eval_shape(lambda: layers.conv(*args, **kwargs,
                                              rngs=nnx.Rngs(0)))

  with layers.conv1x1('matmul'):
    plain = conv(4, 5, 1)
    others = [conv(4, 5, 3), conv(4, 5, 1, stride=2),
              conv(4, 5, 1, padding=((1, 1), (1, 1)))]
  assert _uses_matmul(plain) == [True]
  assert [_uses_matmul(c) for c in others] == [[False]] * 3
  x = jnp.ones((2, 6, 6, 4))
  with pytest.raises(ValueError, match='1x1'):
    layers.channel_product_conv(x, jnp.ones((3, 3, 4, 5)), (1, 1), 'SAME')
  with pytest.raises(ValueError, match='1x1'):
    layers.channel_product_conv(x, jnp.ones((1, 1, 4, 5)), (2, 2), 'SAME')


def test_the_form_is_per_backend_and_the_context_restores_it():
  assert layers.conv1x1_form('cpu') == 'matmul'
  # Not measured on accelerators: the convolution stays.
  assert layers.conv1x1_form('gpu') == layers.conv1x1_form('tpu') == 'conv'
  default = layers.conv1x1_form()
  with layers.conv1x1('conv'):
    assert layers.conv1x1_form('cpu') == 'conv'
    with layers.conv1x1(None):
      assert layers.conv1x1_form() == default
    assert layers.conv1x1_form() == 'conv'
  assert layers.conv1x1_form() == default
  with pytest.raises(ValueError, match='einsum'):
    with layers.conv1x1('einsum'):
      pass


def test_nin_and_its_conv_block_head_have_one_parameter_tree():
  """Same paths, shapes and dtypes under both forms (the full-width
  NIN-4); only the 1x1s (two of each block's three convolutions) differ
  in how they compute."""
  spec = dict(NIN_SPEC, num_blocks=4, width=1.0)

  def build():
    backbone = models.build_backbone(spec, rngs=nnx.Rngs(0))
    options = models.head_options(spec, linear_pool_size=0)
    head = heads.make_head('conv_block', (8, 8, 192), 10, options,
                           rngs=nnx.Rngs(0))
    return backbone, head

  built = {form: _in_form(form, lambda: nnx.eval_shape(build))
           for form in layers.CONV1X1_FORMS}
  for conv_module, matmul_module in zip(built['conv'], built['matmul']):
    assert _leaves(conv_module) == _leaves(matmul_module)
  backbone, head = built['matmul']
  assert ('params/blocks/0/layers/1/conv/kernel', (1, 1, 192, 160),
          'float32') in _leaves(backbone)
  assert _uses_matmul(backbone) == [False, True, True] * 4
  assert _uses_matmul(head.block) == [False, True, True]
  assert not any(_uses_matmul(built['conv'][0]) +
                 _uses_matmul(built['conv'][1]))


def _leaves(module):
  """``(path, shape, dtype)`` of every variable, as checkpoints store
  them."""
  flat = jax.tree_util.tree_flatten_with_path(models.variables(module))[0]
  return [('/'.join(str(getattr(k, 'key', getattr(k, 'idx', k)))
                    for k in path), v.shape, str(v.dtype))
          for path, v in flat]


@pytest.mark.slow  # About 7 s.
def test_nin_forms_agree_on_logits_and_gradients():
  """The whole NIN, training mode (batch statistics), float32."""
  # One set of variables in both forms' networks, as a run restores them.
  variables = jax.jit(lambda: models.init_variables(NIN_SPEC, 0))()
  modules = {
      form: nnx.merge(
          _in_form(form, lambda: models.backbone_graphdef(NIN_SPEC,
                                                          jnp.float32)),
          variables['params'], variables['batch_stats'])
      for form in layers.CONV1X1_FORMS}
  assert _uses_matmul(modules['matmul']) == [False, True, True] * 3
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  weights = jax.random.normal(jax.random.key(2), (3, 4))
  results = {form: _value_and_grads(module, x, weights, train_mode=True)
             for form, module in modules.items()}
  _assert_close(results['matmul'][0], results['conv'][0], 1e-5, 'logits')
  _assert_trees_close(results['matmul'][1], results['conv'][1], 1e-5)


def test_a_network_built_in_one_form_keeps_it_under_jit(product_calls):
  """The form is fixed at build time: jit traces what was built."""
  module = _in_form('matmul', lambda: layers.conv(3, 2, 1,
                                                  rngs=nnx.Rngs(0)))
  with layers.conv1x1('conv'):
    nnx.jit(lambda m, x: m(x))(module, jnp.ones((1, 2, 2, 3)))
  assert product_calls


@pytest.fixture(scope='module')
def conv_written_run(tmp_path_factory):
  """A run trained and exported with 1x1 convolutions as ``lax.conv`` (as
  every checkpoint before the matmul form was)."""
  workdir = str(tmp_path_factory.mktemp('conv_run'))
  config = helpers.tiny_config(num_train_examples=96, batch_size=32)
  with layers.conv1x1('conv'):
    train.train_and_evaluate(config, workdir,
                             mesh=parallel.make_mesh(jax.devices()[:1]))
    out = os.path.join(str(tmp_path_factory.mktemp('exported')),
                       'conv.safetensors')
    export.export(workdir, out)
  return workdir, out


@pytest.mark.slow
def test_a_conv_written_checkpoint_loads_and_agrees_in_the_matmul_form(
    conv_written_run, product_calls):
  workdir, out = conv_written_run
  images = digits.load('test')[0][:24]
  with layers.conv1x1('conv'):
    reference = rotnet_jax.load(workdir)
    expected = reference.logits(images)
    expected_features = reference.features(images, ('conv3',))['conv3']
  for path in (workdir, out):
    with layers.conv1x1('matmul'):
      model = rotnet_jax.load(path)
    product_calls.clear()
    _assert_close(model.logits(images), expected, 1e-5, path)
    assert product_calls, 'the matmul form was not used'
    _assert_close(model.features(images, ('conv3',))['conv3'],
                  expected_features, 1e-5, path)


@pytest.mark.slow
def test_benchmark_times_both_forms_side_by_side(one_device_mesh):
  config = helpers.tiny_config(batch_size=32)
  report = benchmark.run_benchmark(config, steps=1, warmup=0, examples=64,
                                   sources=('device',),
                                   mesh=one_device_mesh)
  assert report['conv1x1_forms'] == ['conv', 'matmul']
  assert report['conv1x1_default'] == 'matmul'
  (result,) = report['results']
  assert result['conv1x1'] == 'matmul'
  assert set(result['conv1x1_forms']) == {'conv', 'matmul'}
  assert result['images_per_sec'] == (
      result['conv1x1_forms']['matmul']['images_per_sec'])
  assert result['matmul_to_conv'] > 0
  with pytest.raises(InputError, match='einsum'):
    benchmark.run_benchmark(config, conv1x1_forms=('einsum',),
                            mesh=one_device_mesh)


@pytest.mark.slow
def test_benchmark_command_times_one_form(tmp_path):
  output = tmp_path / 'bench.json'
  result = subprocess.run(
      [sys.executable, '-m', 'rotnet_jax.benchmark',
       '--config=configs/quick.py', '--config.model.width=0.03125',
       '--config.batch_size=16', '--steps=1', '--warmup=0', '--examples=32',
       '--sources=device', '--conv1x1=conv', f'--output={output}'],
      cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=helpers.one_device_env())
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'device 1x1   conv:' in result.stdout
  report = json.loads(output.read_text())
  assert report['conv1x1_forms'] == ['conv']
  (source,) = report['results']
  assert list(source['conv1x1_forms']) == ['conv']
  assert 'matmul_to_conv' not in source
