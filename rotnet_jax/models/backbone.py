"""What a backbone declares, so that the rest of the package never needs to
know which network it is.

A backbone is described by a small JSON-able *spec* (saved with every
checkpoint, so an evaluation run rebuilds exactly the network it
restores). Its :class:`Backbone` definition turns the config into a spec,
checks the config's model keys, names the blocks whose features heads can
read, builds the network, and builds one more block of its own kind for
the ``conv_block`` head (the paper's "conv" classifier is the next NIN
block), and optionally the ``linear`` head's pool side for each block.

The network it builds is an ``nnx.Module`` called as
``module(images, train=..., up_to=None)`` that returns
``(logits, features)``: float32 logits (None when stopped early by
``up_to``) and a dict of every block's output run, keyed by block name.

To add a backbone: write one module with a :class:`Backbone` subclass and
add one line to the registry in ``rotnet_jax/models/__init__.py``.
"""

import abc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# (kernel_size, out_channels) -> initializer of a convolution's kernel.
KernelInitFactory = Callable[[int, int], jax.nn.initializers.Initializer]


class Backbone(abc.ABC):
  """One kind of network (NIN, ...), as the package sees it."""

  name: str
  # The image side of a network with no weights to read it from (an
  # evaluation's pretrained='random' that leaves config.image_size unset).
  default_image_size: int = 32

  @abc.abstractmethod
  def spec(self, model_config, *, image_size: int,
           num_classes: int) -> dict[str, Any]:
    """The JSON-able spec of the network ``config.model`` describes.

    It holds at least ``name`` (this backbone's registry name),
    ``num_classes`` and ``image_size``.
    """

  def check_config(self, model_config) -> None:
    """Raises ConfigError naming a ``model.*`` key this backbone rejects."""
    del model_config

  @abc.abstractmethod
  def block_names(self, spec: dict[str, Any]) -> tuple[str, ...]:
    """Names of the blocks whose features heads can read, input to output."""

  @abc.abstractmethod
  def build(self, spec: dict[str, Any], *, dtype, rngs: nnx.Rngs
            ) -> nnx.Module:
    """The network of `spec` (see the module docstring for its call)."""

  @abc.abstractmethod
  def head_block(self, spec: dict[str, Any], in_channels: int, *,
                 kernel_init: KernelInitFactory, dtype,
                 rngs: nnx.Rngs) -> tuple[nnx.Module, int]:
    """One more block of this backbone's kind, and its output channels.

    The block maps features to features (``block(x, train=...)``); the
    ``conv_block`` head stacks it on the features it reads. Its width
    follows the spec's width.
    """

  def linear_pool_sizes(self, spec: dict[str, Any]
                        ) -> dict[str, int] | None:
    """The ``linear`` head's max-pool side for each block, or None.

    What ``config.linear_pool_size=0`` selects: a backbone with a protocol
    of its own (AlexNet's ImageNet probes) says it here; None (the
    default) means it has none, and ``linear_pool_size=0`` is refused.
    """
    del spec
    return None

  def feature_shapes(self, spec: dict[str, Any]
                     ) -> dict[str, tuple[int, ...]]:
    """``(H, W, C)`` of every block's features, for the spec's image size.

    Shapes only: nothing is initialised or computed.
    """
    module = nnx.eval_shape(lambda: self.build(spec, dtype=jnp.float32,
                                               rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(module)
    size = spec['image_size']
    _, features = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return {name: tuple(f.shape[1:]) for name, f in features.items()}
