"""PASCAL VOC2007 detection: Fast R-CNN on the AlexNet.

RoI pooling against a direct transcription of Fast R-CNN's loop, the
jitted NMS against ``boxes.nms``, test-time detection by hand, the RoI
sampling ratios and labels, the detection source (scales, mirrors, resume),
the multi-task loss, the VOC reader's boxes and their errors, and tiny
runs end to end on generated shapes (``tests/voc_detection_folder.py``).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import voc_detection_folder
from rotnet_jax import boxes as boxes_lib
from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import detection_source
from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.models import detection
from rotnet_jax.training import objectives
from rotnet_jax.training import train
from rotnet_jax.weights import restore

SPEC = {'name': 'alexnet', 'num_classes': 4, 'num_blocks': 5,
        'width': 1 / 16, 'image_size': 128}


@pytest.fixture(scope='module')
def devkit(tmp_path_factory):
  return voc_detection_folder.write_shapes_devkit(
      str(tmp_path_factory.mktemp('shapes')))


# RoI pooling.


def _reference_roi_pool(features, rois, side, scale):
  """Fast R-CNN's ROIPoolingLayer, loop by loop (bins in exact
  arithmetic)."""
  height, width, channels = features.shape
  out = np.zeros((len(rois), side, side, channels), features.dtype)
  for r, roi in enumerate(rois):
    # C's round(): halves away from zero.
    x1, y1, x2, y2 = (int(np.sign(c) * np.floor(abs(c) + 0.5)) for c in (
        np.float32(v) * np.float32(scale) for v in roi))
    roi_height, roi_width = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
    for i in range(side):
      top = min(max((i * roi_height) // side + y1, 0), height)
      bottom = min(max(-(-(i + 1) * roi_height // side) + y1, 0), height)
      for j in range(side):
        left = min(max((j * roi_width) // side + x1, 0), width)
        right = min(max(-(-(j + 1) * roi_width // side) + x1, 0), width)
        if bottom > top and right > left:
          out[r, i, j] = features[top:bottom, left:right].max(axis=(0, 1))
  return out


def test_roi_pooling_by_hand():
  """A 4x4 map, spatial scale 1: the whole map in 2x2 bins, a one-cell
  RoI, and a RoI half outside the map (its outer bins empty: 0)."""
  features = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
  rois = np.asarray([[0, 0, 3, 3], [1, 2, 1, 2], [2, 2, 5, 5]], np.float32)
  pool = jax.jit(detection.roi_max_pool,
                 static_argnames=('side', 'spatial_scale'))
  pooled = np.asarray(pool(features, rois, side=2,
                           spatial_scale=1.0))[..., 0]
  np.testing.assert_array_equal(pooled[0], [[5, 7], [13, 15]])
  np.testing.assert_array_equal(pooled[1], [[9, 9], [9, 9]])
  np.testing.assert_array_equal(pooled[2], [[15, 0], [0, 0]])
  # At half scale (0, 0, 7, 7) covers cells 0..4 (round(3.5) = 4): bins
  # [0, 3) and [2, 5), the second clipped to the map's [2, 4).
  rois = np.asarray([[0, 0, 7, 7]], np.float32)
  pooled = np.asarray(pool(features, rois, side=2,
                           spatial_scale=0.5))[0, ..., 0]
  np.testing.assert_array_equal(pooled, [[10, 11], [14, 15]])
  # Halves round away from zero, as C's round(): x1 = 5 at scale 0.5 is
  # cell 3 (round-half-to-even would take cell 2).
  rois = np.asarray([[5, 0, 5, 0]], np.float32)
  pooled = np.asarray(pool(features, rois, side=1,
                           spatial_scale=0.5))[0, 0, 0, 0]
  assert pooled == 3


@pytest.mark.parametrize('seed', range(6))
def test_roi_pooling_is_fast_rcnns(seed):
  rng = np.random.default_rng(seed)
  height, width = rng.integers(1, 30, 2)
  side = int(rng.integers(1, 7))
  features = rng.normal(size=(height, width, 3)).astype(np.float32)
  corners = rng.uniform(-40, 16 * max(height, width) + 40, (25, 2, 2))
  rois = np.concatenate([corners.min(1), corners.max(1)], 1)
  pooled = jax.jit(lambda f, r: detection.roi_max_pool(f, r, side=side))(
      features, rois.astype(np.float32))
  np.testing.assert_array_equal(
      np.asarray(pooled), _reference_roi_pool(features, rois, side, 1 / 16))


def test_roi_pooling_gradient_goes_to_each_bins_maximum():
  features = np.random.default_rng(0).normal(size=(5, 6, 2)).astype(
      np.float32)
  rois = np.asarray([[0, 0, 5, 4]], np.float32)
  grad = jax.jit(jax.grad(lambda f: detection.roi_max_pool(
      f, rois, side=2, spatial_scale=1.0).sum()))(features)
  expected = np.zeros_like(features)
  for top, bottom in ((0, 3), (2, 5)):
    for left, right in ((0, 3), (3, 6)):
      for c in range(2):
        window = features[top:bottom, left:right, c]
        y, x = np.unravel_index(window.argmax(), window.shape)
        expected[top + y, left + x, c] += 1
  np.testing.assert_array_equal(np.asarray(grad), expected)


# Test-time detection.


@pytest.mark.parametrize('seed', range(4))
def test_jitted_nms_keeps_what_boxes_nms_keeps(seed):
  rng = np.random.default_rng(seed)
  corners = rng.uniform(0, 60, (30, 2, 2))
  boxes = np.concatenate([corners.min(1), corners.max(1)], 1)
  scores = np.sort(rng.random(30))[::-1]
  keep = np.asarray(detection.nms_keep(jnp.asarray(boxes), jnp.ones(30, bool),
                                       0.3))
  np.testing.assert_array_equal(np.flatnonzero(keep),
                                np.sort(boxes_lib.nms(boxes, scores, 0.3)))


def test_detect_maps_regions_back_to_the_image_and_suppresses():
  """Three regions of a 2x-resized 50x40 image: two overlapping ones of
  class 3 (the weaker suppressed), one padding region (never detected)."""
  logits = np.full((1, 3, 21), -10.0, np.float32)
  logits[0, 0, 3] = logits[0, 1, 3] = 10.0
  logits[0, 1, 3] = 9.0
  logits[0, 2, 5] = 10.0
  deltas = np.zeros((1, 3, 21, 4), np.float32)
  deltas[0, 0, 3] = (0.1, 0.0, 0.0, 0.0)  # Moves right by w * 0.1 * 0.1.
  rois = np.asarray([[[10, 10, 29, 29], [12, 10, 31, 29], [0, 0, 9, 9]]],
                    np.float32)
  detect = jax.jit(functools.partial(
      detection.detect, per_class=2, nms_threshold=0.3,
      box_stds=boxes_lib.BOX_STDS))
  boxes, scores = detect(
      jnp.asarray(logits), jnp.asarray(deltas), jnp.asarray(rois),
      jnp.asarray([[1, 1, 0]], jnp.float32), jnp.asarray([2.0]),
      jnp.asarray([[40, 50]]))
  boxes, scores = np.asarray(boxes), np.asarray(scores)
  assert boxes.shape == (1, 20, 2, 4) and scores.shape == (1, 20, 2)
  car = 3 - 1  # Class 3 of 21 is foreground class 2.
  probability = np.exp(10) / (np.exp(10) + 20 * np.exp(-10))
  np.testing.assert_allclose(scores[0, car, 0], probability, rtol=1e-6)
  assert scores[0, car, 1] == -1  # Suppressed: IoU 0.82 > 0.3.
  np.testing.assert_allclose(boxes[0, car, 0],
                             (5.1, 5.0, 14.6, 14.5), atol=1e-5)
  # The padding region has the best score of class 5 but is no detection.
  assert np.all(scores[0, 4] < 0.01)


# RoI sampling and labels.


def test_regions_are_labelled_by_their_best_overlap():
  gt = np.asarray([[0, 0, 9, 9], [20, 20, 39, 39]], np.float32)
  rois = np.asarray([[0, 0, 9, 9],      # IoU 1: class 7
                     [0, 0, 9, 4],      # 0.5: foreground
                     [0, 0, 9, 3],      # 0.4: background
                     [0, 0, 0, 9],      # 0.1: background
                     [50, 50, 60, 60],  # 0: unused
                     [20, 20, 39, 39]], np.float32)
  overlap, label, target = detection_source.label_rois(
      rois, gt, np.asarray([6, 11]))
  np.testing.assert_allclose(overlap, [1, 0.5, 0.4, 0.1, 0, 1])
  np.testing.assert_array_equal(label, [7, 7, 0, 0, 0, 12])
  np.testing.assert_allclose(target[1], boxes_lib.encode(rois[1], gt[0]),
                             rtol=1e-6)
  np.testing.assert_array_equal(target[[0, 2, 3, 4, 5]], 0)


def test_sampling_takes_a_quarter_foreground_and_pads():
  rng = np.random.default_rng(0)
  gt = np.asarray([[40, 40, 79, 79]], np.float32)
  shifts = rng.uniform(-4, 4, (100, 4))
  near = gt + shifts                                 # Foreground.
  half = np.asarray([[40, 40, 79, 59]]) + rng.uniform(-2, 2, (100, 4))
  far = np.asarray([[150, 150, 170, 170]] * 50, np.float32)  # Unused.
  proposals = np.concatenate([near, half, far]).astype(np.float32)
  sample = detection_source.sample_rois(
      rng, proposals, gt, np.asarray([2]), rois_per_image=64,
      foreground_fraction=0.25)
  labels, weights = sample['roi_labels'], sample['roi_weights']
  assert sample['rois'].shape == (64, 4) and weights.sum() == 64
  assert (labels == 3).sum() == 16 and (labels == 0).sum() == 48
  overlaps = boxes_lib.iou(sample['rois'], gt)[:, 0]
  assert np.all(overlaps[labels > 0] >= 0.5)
  assert np.all((overlaps[labels == 0] >= 0.1) & (overlaps[labels == 0] < 0.5))
  # Few background regions: what there is, then padding (weight 0).
  sample = detection_source.sample_rois(
      rng, np.concatenate([near, half[:5]]).astype(np.float32), gt,
      np.asarray([2]), rois_per_image=64, foreground_fraction=0.25)
  assert sample['roi_weights'].sum() == 16 + 5
  assert np.all(sample['roi_weights'][21:] == 0)
  assert np.all(sample['roi_labels'][21:] == 0)


def test_scale_factor_caps_the_longer_side():
  assert detection_source.scale_factor(375, 500, 600, 1000) == 1.6
  assert detection_source.scale_factor(200, 500, 600, 1000) == 2.0
  assert detection_source.canvas_side(600, 600, 1000) == 1000
  assert detection_source.canvas_side(1200, 600, 1000) == 2000
  assert detection_source.canvas_side(480, 600, 1000) == 800


def test_mirrored_boxes_frame_the_mirrored_pixels():
  image = np.zeros((10, 16), np.uint8)
  image[2:5, 3:8] = 1
  box = np.asarray([[3, 2, 7, 4]], np.float32)
  (x1, y1, x2, y2), = detection_source.flip_boxes(box, 16).astype(int)
  mirrored = image[:, ::-1]
  assert mirrored[y1:y2 + 1, x1:x2 + 1].all() and mirrored.sum() == 15


# The source.


def _source(devkit, split='trainval', *, train=True, regions=None,
            **overrides):
  opened = voc.open_detection(devkit, split)
  if regions is None:
    regions = voc_detection_folder.proposals_for(opened, per_image=40)
  settings = dict(batch_size=2, train=train, seed=0, train_scales=(96, 128),
                  test_scale=96, max_size=160, rois_per_image=16,
                  foreground_fraction=0.25)
  settings.update(overrides)
  return detection_source.DetectionSource(
      opened, regions, mesh=parallel.make_mesh(jax.devices()[:1]),
      **settings)


def test_training_batches_are_scaled_mirrored_and_resumable(devkit):
  source = _source(devkit)
  batches = [jax.device_get(b) for b in source.epoch(0)]
  assert len(batches) == source.steps_per_epoch == 8
  sides = {b['image'].shape[1] for b in batches}
  assert sides <= {160, 214} and len(sides) == 2  # Both scales drawn.
  for batch in batches:
    assert batch['rois'].shape == (2, 16, 4)
    assert batch['roi_labels'].dtype == np.int32
    side = batch['image'].shape[1]
    assert np.all(batch['rois'] >= 0) and np.all(batch['rois'] < side)
  # Its gt boxes come first: label > 0 and IoU 1 with themselves; the
  # image holds the object's colour there (mirrored or not).
  batch = batches[0]
  first = batch['rois'][0, 0].round().astype(int)
  colour = batch['image'][0, first[1] + 3:first[3] - 2,
                          first[0] + 3:first[2] - 2].reshape(-1, 3).mean(0)
  expected = list(voc_detection_folder.SHAPE_CLASSES.values())
  name = voc.CLASSES[batch['roi_labels'][0, 0] - 1]
  assert np.abs(colour - expected[list(
      voc_detection_folder.SHAPE_CLASSES).index(name)]).max() < 30
  # Resumed at step 5: the same batches.
  resumed = [jax.device_get(b) for b in source.epoch(0, start_step=5)]
  for a, b in zip(batches[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_evaluation_batches_keep_every_image_and_its_scale(devkit):
  regions = voc_detection_folder.proposals_for(
      voc.open_detection(devkit, 'test'), per_image=40)
  regions[1] = regions[1][:10]
  source = _source(devkit, 'test', train=False, batch_size=3,
                   regions=regions, fill=(10, 20, 30))
  batches = [jax.device_get(b) for b in source.epoch(0)]
  # Every proposal, padded to the largest count; the canvas around the
  # image is the fill colour.
  assert batches[0]['rois'].shape == (3, 40, 4)
  np.testing.assert_array_equal(batches[0]['roi_weights'].sum(1),
                                [40, 10, 40])
  np.testing.assert_array_equal(batches[0]['image'][0, -1, -1], (10, 20, 30))
  assert len(batches) == 3  # 8 images in batches of 3, padded.
  index = np.concatenate([b['index'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(index[mask > 0], np.arange(8))
  opened = voc.open_detection(devkit, 'test')
  height, width = opened.sizes[0]
  factor = batches[0]['scale'][0]
  assert factor == pytest.approx(96 / min(height, width))
  np.testing.assert_allclose(batches[0]['rois'][0], regions[0] * factor,
                             rtol=1e-6)
  assert len(source.ground_truth) == 8 and source.ids == opened.ids


# The objective.


@pytest.fixture(scope='module')
def objective():
  """The detection objective on a random tiny AlexNet (read only)."""
  config = config_schema.transfer_defaults('voc_detection')
  variables = models.init_variables(SPEC, 0)
  return objectives.VOCDetection(
      config, restore.RestoredBackbone(SPEC, variables,
                                       {'pretrained': 'random'}))


def test_the_loss_is_softmax_plus_smooth_l1_on_foreground(objective):
  logits = jnp.asarray([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                         [5.0, 0.0, 0.0]]])
  deltas = jnp.zeros((1, 3, 3, 4)).at[0, 1, 1].set(
      jnp.asarray([0.5, -2.0, 0.0, 0.0]))
  output = objectives.Output(
      {objective.head: logits}, jnp.asarray([[0, 1, 2]]),
      jnp.ones(1), None,
      extras={'deltas': deltas, 'roi_targets': jnp.zeros((1, 3, 4)),
              'roi_weights': jnp.asarray([[1.0, 1.0, 0.0]])})
  (loss,) = objective.losses(output).values()
  log_softmax = jax.nn.log_softmax(logits[0], axis=-1)
  smooth_l1 = 0.5 * 0.5**2 + (2.0 - 0.5)
  expected = (-log_softmax[0, 0] - log_softmax[1, 1] + smooth_l1) / 2
  np.testing.assert_allclose(loss, [expected], rtol=1e-6)


def test_new_layers_are_drawn_as_fast_rcnns_and_the_rest_restored(
    objective):
  params, _ = objective.init(0, objective.constants)
  assert np.std(params['cls_score']['kernel']) == pytest.approx(0.01,
                                                                rel=0.1)
  assert np.std(params['bbox_pred']['kernel']) == pytest.approx(0.001,
                                                                rel=0.1)
  assert not np.any(params['cls_score']['bias'])
  np.testing.assert_array_equal(
      params['alexnet']['conv3']['conv']['kernel'],
      objective.constants['params']['conv3']['conv']['kernel'])
  assert 'classifier' not in params['alexnet']


# The VOC reader's boxes.


def test_boxes_are_read_0_based_and_checked(devkit, tmp_path):
  opened = voc.open_detection(devkit, 'test')
  path = os.path.join(devkit, 'VOC2007', 'Annotations', f'{opened.ids[0]}.xml')
  with open(path) as f:
    text = f.read()
  xmin = int(text.split('<xmin>')[1].split('<')[0])
  assert opened.boxes[0][0, 0] == xmin - 1
  assert len(opened.boxes[0]) == len(opened.labels[0])
  height, width = opened.sizes[0]
  bad = text.replace(f'<xmin>{xmin}</xmin>', f'<xmin>{width + 5}</xmin>',
                     1)
  with open(path, 'w') as f:
    f.write(bad)
  try:
    with pytest.raises(InputError, match=r'annotation file .*object 1'):
      voc.open_detection(devkit, 'test')
  finally:
    with open(path, 'w') as f:
      f.write(text)


# End to end.


def tiny_detection_config(devkit, **overrides):
  config = config_schema.transfer_defaults('voc_detection')
  config.dataset = devkit
  config.pretrained = 'random'
  config.random_batch_stats = 'fresh'
  config.model.name = 'alexnet'
  config.model.num_blocks = 5
  config.model.width = 1 / 16
  config.model.bn_scale_init = 'ones'
  config.image_size = 128
  config.batch_size = 2
  config.num_epochs = 1
  config.learning_rate_steps_table = ((10_000, 0.01),)
  config.weight_decay = 0.0
  config.train_scales = (96, 128)
  config.test_scale = 96
  config.max_size = 160
  config.max_proposals = 40
  config.rois_per_image = 16
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  config.log_every_steps = 4
  config.update_from_flattened_dict(overrides)
  return config


def _run(config, workdir, devices=1):
  return train.train_and_evaluate(
      config, str(workdir), mesh=parallel.make_mesh(jax.devices()[:devices]))


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    (head,) = json.load(f)['heads']
  return head


def test_detection_end_to_end(devkit, tmp_path):
  """One epoch, data-parallel over two devices (one image each): results
  name the mAP, test events hold per-class APs, and the devkit's results
  files list detections of test images."""
  workdir = str(tmp_path / 'det')
  # One training scale: one compilation fewer (the source tests draw both).
  _run(tiny_detection_config(devkit, train_scales=(96,)), workdir,
       devices=2)
  head = _results(workdir)
  assert head['head'] == 'voc_detection' and head['metric'] == 'mAP'
  assert 0.0 <= head['final_test_mAP'] <= 1.0
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    (test,) = [e for e in map(json.loads, f) if e['split'] == 'test']
  # The test split's 8 images hold cars and people (no aeroplane that is
  # not difficult) and no cow: those APs are NaN, left out of the mAP.
  assert 0 <= test['AP_car'] <= 1 and 0 <= test['AP_person'] <= 1
  assert np.isnan(test['AP_aeroplane']) and np.isnan(test['AP_cow'])
  assert test['mAP'] == pytest.approx((test['AP_car'] +
                                       test['AP_person']) / 2)
  ids = set(voc.open_detection(devkit, 'test').ids)
  path = os.path.join(workdir, 'detections', 'comp4_det_test_car.txt')
  with open(path) as f:
    lines = [line.split() for line in f]
  assert lines and all(len(l) == 6 and l[0] in ids for l in lines)
  assert all(0 <= float(l[1]) <= 1 for l in lines)


@pytest.mark.slow  # About a minute.
def test_a_tiny_detector_beats_the_untrained_one(devkit, tmp_path):
  """30 epochs on 16 images of coloured shapes, tested on 8 others: the
  trained detector's mAP is well above the untrained network's (0.66
  against 0.12, measured; a tiny random network, so this is sensitive to
  the data: on a mid-grey background, close to the canvas's mean colour,
  it reached only 0.12 against 0.04)."""
  _run(tiny_detection_config(devkit, learning_rate_steps_table=(
      (10_000, 0.0),)), tmp_path / 'untrained')
  _run(tiny_detection_config(devkit, num_epochs=30, eval_every_epochs=30,
                             checkpoint_every_epochs=30,
                             learning_rate_steps_table=((10_000, 0.02),)),
       tmp_path / 'trained')
  chance = _results(str(tmp_path / 'untrained'))['final_test_mAP']
  learned = _results(str(tmp_path / 'trained'))['final_test_mAP']
  assert learned > chance + 0.2, (chance, learned)


def _break_annotation(devkit):
  path = os.path.join(devkit, 'VOC2007', 'Annotations', '000001.xml')
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:
    f.write(text.replace('<xmax>', '<xmax>9', 1))  # Past the image.
  return ('000001.xml', 'object 1')


def _swap_proposals(devkit):
  folder = os.path.join(devkit, 'VOC2007', 'proposals')
  trainval = os.path.join(folder, 'selective_search_fast_trainval.npz')
  os.replace(os.path.join(folder, 'selective_search_fast_test.npz'),
             trainval)  # The test split's proposals where trainval's go.
  return ('selective_search_fast_trainval.npz',)


@pytest.mark.slow  # A main.py process each: several seconds.
@pytest.mark.parametrize('damage', [_break_annotation, _swap_proposals])
def test_bad_detection_input_is_one_error_line(damage, tmp_path):
  bad = voc_detection_folder.write_shapes_devkit(str(tmp_path / 'bad'),
                                                 trainval=2, test=2)
  named = damage(bad)
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/voc07_detection.py',
       f'--workdir={workdir}', '--config.pretrained=random',
       '--config.model.name=alexnet', f'--config.dataset={bad}'],
      cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=helpers.one_device_env())
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error:'), last
  assert all(part in last for part in named), last
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()
