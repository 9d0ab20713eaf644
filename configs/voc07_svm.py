"""Linear SVMs on frozen RotNet AlexNet features: PASCAL VOC07 (Goyal et al.).

    python -m rotnet_jax.extract --pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --dataset=voc/2007 --split=trainval --pool=svm --out=/data/feats/trainval.npz
    python -m rotnet_jax.extract --pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --dataset=voc/2007 --split=test --pool=svm --out=/data/feats/test.npz
    python -m rotnet_jax.svm --config=configs/voc07_svm.py \
        --train=/data/feats/trainval.npz --test=/data/feats/test.npz \
        --out=/data/feats/svm.json

The benchmark of Goyal et al., "Scaling and Benchmarking Self-Supervised
Visual Representation Learning" (ICCV 2019), as VISSL and mmselfsup ship
it: each block of the frozen network average-pooled to about 9,216 values
(AlexNet conv1..conv5: 12, 7, 5, 6, 6 a side; ``extract --pool=svm``), one
linear SVM per class, its cost chosen by 3-fold cross-validation on
trainval among 10^-7..10^2 and 2^-19..2^-4, mAP on test (the protocol and
its differences: ``rotnet_jax/training/svm.py``). Not a driver run: this
file holds the settings of ``rotnet-svm`` (``training.svm.settings``).

No paper number: the RotNet paper does not run this benchmark (Goyal et
al. report it for other methods). ``--dataset`` may also be a VOCdevkit
folder. One block of 5,011 x 9,216 features takes about 11 minutes on a
busy 2-core CPU.
"""

from rotnet_jax.training import svm


def get_config():
  return svm.settings()
