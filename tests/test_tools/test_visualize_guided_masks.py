import os
import runpy

import mmcv
import numpy as np
import pytest
import torch
from helpers import REPO_ROOT
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from drconv_mmdet.visualization import (REGION_PALETTE, colorize_regions, crop_to_image,
                                        draw_guided_mask)

DEMO_DRFPN_CONFIG = str(REPO_ROOT / 'configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py')
DEMO_CONFIG = str(REPO_ROOT / 'configs/demo/mask-rcnn_r18_fpn_toy-coco.py')
LAYERS = ('neck.fpn_convs.0.conv', 'neck.fpn_convs.1.conv')


@pytest.fixture(scope='module')
def visualize():
    return runpy.run_path(str(REPO_ROOT / 'tools/analysis_tools/visualize_guided_masks.py'))['main']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A checkpoint of the demo DRFPN model with its initial weights."""
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(DEMO_DRFPN_CONFIG).model)
    path = tmp_path_factory.mktemp('checkpoint') / 'drfpn.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)
    return str(path)


@pytest.mark.slow
def test_one_picture_per_image_and_layer(visualize, checkpoint, toy_coco_root, tmp_path):
    image_dir = os.path.join(toy_coco_root, 'val')
    stems = sorted(os.path.splitext(name)[0] for name in os.listdir(image_dir))
    visualize([DEMO_DRFPN_CONFIG, checkpoint, image_dir, '--out-dir', str(tmp_path)])

    assert sorted(os.listdir(tmp_path)) == sorted(f'{stem}_{layer}.png' for stem in stems
                                                  for layer in LAYERS)
    palette = {tuple(colour) for colour in REGION_PALETTE}
    for stem in stems:
        image = mmcv.imread(os.path.join(image_dir, f'{stem}.png'), channel_order='rgb')
        height, width = image.shape[:2]
        for layer in LAYERS:
            picture = mmcv.imread(tmp_path / f'{stem}_{layer}.png', channel_order='rgb')
            assert picture.shape == (height, 2 * width, 3)  # no gap between the halves
            np.testing.assert_array_equal(picture[:, :width], image)
            colours = {tuple(c) for c in np.unique(picture[:, width:].reshape(-1, 3), axis=0)}
            assert colours <= palette and 1 <= len(colours) <= 8  # region_num=8


def test_missing_checkpoint(visualize, toy_coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint '.*missing.pth' does not exist"):
        visualize([
            DEMO_DRFPN_CONFIG,
            str(tmp_path / 'missing.pth'), toy_coco_root, '--out-dir',
            str(tmp_path)
        ])


def test_no_images(visualize, checkpoint, tmp_path):
    (tmp_path / 'notes.txt').write_text('not an image')
    with pytest.raises(ValueError,
                       match=r'IMAGES \[.*\] hold no image; expected image files or '
                       r'folders with files ending in \.jpg'):
        visualize([DEMO_DRFPN_CONFIG, checkpoint, str(tmp_path), '--out-dir', str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="image or folder '.*nowhere' does not exist"):
        visualize(
            [DEMO_DRFPN_CONFIG, checkpoint,
             str(tmp_path / 'nowhere'), '--out-dir',
             str(tmp_path)])


def test_model_without_drconv(visualize, checkpoint, toy_coco_root, tmp_path):
    with pytest.raises(ValueError,
                       match='the model of .*mask-rcnn_r18_fpn_toy-coco.py has no '
                       'DRConv layer to draw'):
        visualize([
            DEMO_CONFIG, checkpoint,
            os.path.join(toy_coco_root, 'val'), '--out-dir',
            str(tmp_path)
        ])


def test_colorize_regions():
    mask = np.array([[0, 1], [19, 1]])
    colours = colorize_regions(mask)
    assert colours.dtype == np.uint8 and colours.shape == (2, 2, 3)
    assert [tuple(c) for c in colours.reshape(-1, 3)
            ] == [REGION_PALETTE[0], REGION_PALETTE[1], REGION_PALETTE[19], REGION_PALETTE[1]]
    assert len(set(REGION_PALETTE)) == len(REGION_PALETTE) >= 16


@pytest.mark.parametrize('mask, message', [
    (np.array([[0, 20]]), r'region ids in \[0, 20\) .* but got ids in \[0, 20\]'),
    (np.array([[-1, 0]]), r'region ids in \[0, 20\) .* but got ids in \[-1, 0\]'),
    (np.zeros((2, 2), dtype=np.float32), 'must be a 2-D array of integer region ids, but got a '
     '2-D float32 array'),
    (np.zeros((1, 2, 2), dtype=np.int64), 'but got a 3-D int64 array'),
])
def test_colorize_regions_errors(mask, message):
    with pytest.raises(ValueError, match=message):
        colorize_regions(mask)


def test_crop_to_image():
    mask = np.arange(8 * 10).reshape(8, 10)
    # A 30 x 37 image padded to 32 x 40 covers 7.5 x 9.25 of the 8 x 10 mask pixels.
    np.testing.assert_array_equal(crop_to_image(mask, (30, 37), (32, 40)), mask[:, :10])
    np.testing.assert_array_equal(crop_to_image(mask, (16, 20), (32, 40)), mask[:4, :5])
    with pytest.raises(ValueError,
                       match=r'img_shape must be positive and fit in '
                       r'batch_input_shape=\(32, 40\), but got \(33, 40\)'):
        crop_to_image(mask, (33, 40), (32, 40))


def test_draw_guided_mask_upsamples_to_the_image():
    image = np.full((4, 6, 3), 7, dtype=np.uint8)
    picture = draw_guided_mask(image, np.array([[0, 1, 2], [3, 4, 5]]))
    assert picture.shape == (4, 12, 3)
    np.testing.assert_array_equal(picture[:, :6], image)
    # Each mask pixel becomes a 2 x 2 block.
    expected = np.asarray(REGION_PALETTE,
                          dtype=np.uint8)[[[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2]
    np.testing.assert_array_equal(picture[:, 6:], expected)
    with pytest.raises(ValueError,
                       match=r'image must be a uint8 array of shape \(H, W, 3\), but '
                       r'got a float64 array of shape \(4, 6\)'):
        draw_guided_mask(np.zeros((4, 6)), np.zeros((2, 3), dtype=np.int64))
