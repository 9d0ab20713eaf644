"""Low-shot linear SVMs on frozen RotNet AlexNet features: PASCAL VOC07.

    python -m rotnet_jax.svm --config=configs/voc07_svm_low_shot.py \
        --train=/data/feats/trainval.npz --test=/data/feats/test.npz \
        --out=/data/feats/svm_low_shot.json

The features as ``voc07_svm.py`` extracts them. Goyal et al.'s low-shot
variant besides the full benchmark: for k = 1, 2, 4, 8, 16, 32, 64, 96
positives per class (and 19 k negatives), 5 random samples each, one SVM
per cost, the cost reported the one with the best test mAP averaged over
the samples (theirs: chosen on the test set), mean and std over the
samples. Not a driver run: the settings of ``rotnet-svm``.

No paper number (the RotNet paper does not run it). One block's low-shot
run takes about 8 minutes on a busy 2-core CPU.
"""

from rotnet_jax.training import svm


def get_config():
  config = svm.settings()
  config.low_shot = True
  return config
