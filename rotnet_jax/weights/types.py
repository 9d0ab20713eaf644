"""The host-side weights type every weights format reads into.

:class:`Weights` is a backbone (and maybe its :class:`Heads`) as numpy
arrays in exactly the tree ``models.init_variables`` builds, whatever the
format it came from; the kind constants name those formats.
"""

import dataclasses
from typing import Any

from rotnet_jax import config_schema

# The kinds of path ``weights.read`` accepts.
WORKDIR = 'workdir'
SAFETENSORS = 'safetensors'
TORCH = 'torch'
SAFETENSORS_SUFFIX = '.safetensors'
# ``config.pretrained`` for a randomly initialised backbone: no weights,
# hence no format; named in the formats' messages.
RANDOM = 'random'


@dataclasses.dataclass(frozen=True)
class Heads:
  """Classifier heads trained on blocks of a backbone.

  Attributes:
    head_type: a key of ``models.heads.HEADS``.
    blocks: the blocks with a head.
    num_classes: outputs of every head.
    variables: ``{'params': {block: ...}, 'batch_stats': {block: ...}}``,
      numpy arrays in the tree the head module builds.
  """
  head_type: str
  blocks: tuple[str, ...]
  num_classes: int
  variables: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Weights:
  """A backbone (and maybe heads), on the host.

  Attributes:
    spec: the backbone's spec (``models.backbone_spec``): what rebuilds it.
    variables: ``{'params', 'batch_stats'}`` of the backbone, numpy
      float32 arrays in the tree of ``models.init_variables(spec)``.
    origin: JSON-able, recorded in ``results.json`` and checkpoints:
      ``{'pretrained': absolute path, 'pretrained_format': kind,
      'pretrained_step': step or None}``.
    mean_rgb: per-channel mean (0..255 scale) the network's inputs were
      normalised with.
    std_rgb: the matching standard deviations.
    heads: classifier heads, when the path holds some (an evaluation
      workdir, or an imported official classifier).
  """
  spec: dict[str, Any]
  variables: dict[str, Any]
  origin: dict[str, Any]
  mean_rgb: tuple[float, float, float] = config_schema.CIFAR_MEAN_RGB
  std_rgb: tuple[float, float, float] = config_schema.CIFAR_STD_RGB
  heads: Heads | None = None
