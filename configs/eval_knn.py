"""Weighted k-NN on frozen features: every block scored, nothing trained.

    python main.py --config=configs/eval_knn.py --workdir=/tmp/knn_nin4 \
        --config.pretrained=/tmp/rotnet_nin4

Globally average-pooled, L2-normalised features of the training split are
the memory bank; each test image takes its 200 most similar (cosine)
training images, each voting for its label with weight exp(sim / 0.07).
Not a protocol of the paper: a quick, training-free score of any block
(seconds to minutes), written to results.json like the trained heads.
`--config.pretrained` also takes an exported .safetensors file, an
official PyTorch file, or 'random'.
"""

from rotnet_jax import config_schema


def get_config():
  return config_schema.evaluation_defaults('knn')
