import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT
from mmdet.registry import DATASETS
from mmengine.registry import init_default_scope
from pycocotools.coco import COCO

from drconv_mmdet.datasets import (TOY_COCO_CLASSES, ToyCocoDataset, ensure_toy_coco,
                                   generate_toy_coco)

# Small images keep the tests that generate their own set fast.
SMALL = dict(num_train=3, num_val=2, min_size=32, max_size=48)


def _read_tree(root: Path) -> Dict[str, bytes]:
    """Contents of every file under ``root``, keyed by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob('*') if p.is_file()}


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """``[x0, y0, x1, y1]`` of the pixels set in ``mask``, pixel (i, j) covering [j, j + 1)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    summaries = [generate_toy_coco(str(tmp_path / name), **SMALL) for name in ('a', 'b')]
    assert summaries[0] == summaries[1]
    first, second = _read_tree(tmp_path / 'a'), _read_tree(tmp_path / 'b')
    assert sorted(first) == [
        'annotations/instances_train.json', 'annotations/instances_val.json', 'train/000001.png',
        'train/000002.png', 'train/000003.png', 'val/000001.png', 'val/000002.png'
    ]
    assert first == second
    assert first['train/000001.png'] != first['val/000001.png']


def test_seed_changes_the_set(tmp_path: Path) -> None:
    generate_toy_coco(str(tmp_path / 'a'), seed=0, **SMALL)
    generate_toy_coco(str(tmp_path / 'b'), seed=1, **SMALL)
    ann_file = 'annotations/instances_train.json'
    assert (tmp_path / 'a' / ann_file).read_bytes() != (tmp_path / 'b' / ann_file).read_bytes()


def test_images_do_not_depend_on_split_sizes(tmp_path: Path) -> None:
    generate_toy_coco(str(tmp_path / 'a'), **SMALL)
    generate_toy_coco(str(tmp_path / 'b'), **dict(SMALL, num_train=1, num_val=1))
    for image in ('train/000001.png', 'val/000001.png'):
        assert (tmp_path / 'a' / image).read_bytes() == (tmp_path / 'b' / image).read_bytes()


def test_summary_matches_annotation_files(tmp_path: Path) -> None:
    summary = generate_toy_coco(str(tmp_path), **SMALL)
    for split, num_images in (('train', 3), ('val', 2)):
        coco = json.loads((tmp_path / 'annotations' / f'instances_{split}.json').read_text())
        assert summary[split] == dict(images=num_images, instances=len(coco['annotations']))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_pycocotools_loads_split(toy_coco_root: str, split: str) -> None:
    coco = COCO(os.path.join(toy_coco_root, 'annotations', f'instances_{split}.json'))
    assert [(c['id'], c['name']) for c in coco.loadCats(coco.getCatIds())] == [(1, 'circle'),
                                                                               (2, 'rectangle'),
                                                                               (3, 'triangle')]
    assert len(coco.getImgIds()) == {'train': 8, 'val': 4}[split]
    for image_info in coco.loadImgs(coco.getImgIds()):
        image = cv2.imread(os.path.join(toy_coco_root, split, image_info['file_name']))
        assert image.shape == (image_info['height'], image_info['width'], 3)
        assert 128 <= image_info['height'] <= 256 and 128 <= image_info['width'] <= 256
        assert 1 <= len(coco.getAnnIds(imgIds=image_info['id'])) <= 6


@pytest.mark.parametrize('split', ['train', 'val'])
def test_masks_describe_the_objects(toy_coco_root: str, split: str) -> None:
    coco = COCO(os.path.join(toy_coco_root, 'annotations', f'instances_{split}.json'))
    for image_info in coco.loadImgs(coco.getImgIds()):
        image = cv2.imread(os.path.join(toy_coco_root, split, image_info['file_name']))
        short_side = min(image.shape[:2])
        coverage = np.zeros(image.shape[:2], dtype=np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_info['id'])):
            assert ann['iscrowd'] == 0
            assert ann['category_id'] in (1, 2, 3)
            mask = coco.annToMask(ann)
            x, y, w, h = ann['bbox']
            np.testing.assert_array_equal(_mask_box(mask), [x, y, x + w, y + h])
            assert ann['area'] == mask.sum()
            assert max(w, h) <= 0.45 * short_side
            coverage += mask
            # Objects are flat fills plus noise of std 6, so every pixel under the mask lies
            # within 6 std of the fill; a mask off its shape by a pixel takes in background.
            pixels = image[mask.astype(bool)].astype(np.float64)
            assert np.abs(pixels - np.median(pixels, axis=0)).max() <= 36
        assert coverage.max() == 1, 'objects must not overlap'


def test_smallest_images_keep_nonempty_objects(tmp_path: Path) -> None:
    generate_toy_coco(str(tmp_path), num_train=100, num_val=1, min_size=16, max_size=16)
    coco = COCO(str(tmp_path / 'annotations' / 'instances_train.json'))
    assert all(coco.getAnnIds(imgIds=image_id) for image_id in coco.getImgIds())
    assert min(ann['area'] for ann in coco.loadAnns(coco.getAnnIds())) > 0


def test_ensure_toy_coco_regenerates_only_when_needed(tmp_path: Path) -> None:
    ann_file = tmp_path / 'annotations' / 'instances_train.json'
    assert ensure_toy_coco(str(tmp_path), **SMALL)
    manifest = json.loads((tmp_path / 'toy_coco.json').read_text())
    assert manifest['args'] == dict(SMALL, seed=0)
    written_at = ann_file.stat().st_mtime_ns

    assert not ensure_toy_coco(str(tmp_path), **SMALL)
    assert ann_file.stat().st_mtime_ns == written_at
    assert ensure_toy_coco(str(tmp_path), force=True, **SMALL)

    assert ensure_toy_coco(str(tmp_path), **dict(SMALL, num_train=2))
    assert sorted(os.listdir(tmp_path / 'train')) == ['000001.png', '000002.png']
    assert len(json.loads(ann_file.read_text())['images']) == 2
    assert not ensure_toy_coco(str(tmp_path), **dict(SMALL, num_train=2))


def test_ensure_toy_coco_redoes_incomplete_or_outdated_sets(tmp_path: Path) -> None:
    ensure_toy_coco(str(tmp_path), **SMALL)
    (tmp_path / 'val' / '000001.png').unlink()
    assert ensure_toy_coco(str(tmp_path), **SMALL)
    assert (tmp_path / 'val' / '000001.png').is_file()

    manifest_path = tmp_path / 'toy_coco.json'
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, version='0.0.0')))
    assert ensure_toy_coco(str(tmp_path), **SMALL)

    (tmp_path / 'annotations' / 'instances_val.json').unlink()
    assert ensure_toy_coco(str(tmp_path), **SMALL)


def test_ensure_toy_coco_rejects_unknown_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match='num_trian'):
        ensure_toy_coco(str(tmp_path), num_trian=3)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_train=0), 'num_train must be an integer >= 1, but got 0'),
    (dict(num_train=2.5), 'num_train must be an integer >= 1, but got 2.5'),
    (dict(num_val=-1), 'num_val must be an integer >= 1, but got -1'),
    (dict(num_val=True), 'num_val must be an integer >= 1, but got True'),
    (dict(min_size=15), 'min_size must be an integer >= 16, but got 15'),
    (dict(min_size=64, max_size=63), 'max_size must be an integer >= 64, but got 63'),
    (dict(seed=-1), 'seed must be an integer >= 0, but got -1'),
    (dict(seed='0'), "seed must be an integer >= 0, but got '0'"),
])
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_toy_coco(str(tmp_path / 'generated'), **kwargs)
    assert not (tmp_path / 'generated').exists()

    ensure_toy_coco(str(tmp_path / 'kept'), **SMALL)
    before = _read_tree(tmp_path / 'kept')
    with pytest.raises(ValueError, match=re.escape(message)):
        ensure_toy_coco(str(tmp_path / 'kept'), **kwargs)
    assert _read_tree(tmp_path / 'kept') == before


@pytest.mark.slow
def test_cli_is_idempotent(tmp_path: Path) -> None:
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(
                   filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    command = [
        sys.executable, 'tools/misc/make_toy_coco.py', '--out-dir',
        str(tmp_path), '--num-train', '2', '--num-val', '1', '--min-size', '32', '--max-size', '40',
        '--seed', '3'
    ]

    def run() -> str:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert 'Generated 2 train and 1 val images' in run()
    assert json.loads((tmp_path / 'toy_coco.json').read_text())['args'] == dict(num_train=2,
                                                                                num_val=1,
                                                                                min_size=32,
                                                                                max_size=40,
                                                                                seed=3)
    assert 'is up to date' in run()


def test_labels_name_the_annotation_categories(toy_coco_root: str) -> None:
    """The dataset's classes are the categories of the file, and each label names its own."""
    init_default_scope('mmdet')
    dataset = DATASETS.build(
        dict(type='ToyCocoDataset',
             data_root=toy_coco_root,
             ann_file='annotations/instances_train.json',
             data_prefix=dict(img='train/'),
             pipeline=[]))
    assert isinstance(dataset, ToyCocoDataset)
    coco = COCO(os.path.join(toy_coco_root, 'annotations', 'instances_train.json'))
    classes = dataset.metainfo['classes']
    assert classes == tuple(cat['name'] for cat in coco.loadCats(coco.getCatIds()))
    assert len(dataset.metainfo['palette']) == len(classes)
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info['img_id']))
        assert [classes[instance['bbox_label']] for instance in info['instances']
                ] == [coco.loadCats(ann['category_id'])[0]['name'] for ann in anns]


@pytest.mark.parametrize('dataset_cfg', [
    dict(type='ToyCocoDataset'),
    dict(type='CocoDataset', metainfo=dict(classes=TOY_COCO_CLASSES)),
])
def test_mmdet_pipeline_loads_the_set(toy_coco_root: str, dataset_cfg: dict) -> None:
    init_default_scope('mmdet')
    dataset = DATASETS.build(
        dict(dataset_cfg,
             data_root=toy_coco_root,
             ann_file='annotations/instances_val.json',
             data_prefix=dict(img='val/'),
             pipeline=[
                 dict(type='LoadImageFromFile'),
                 dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                 dict(type='PackDetInputs'),
             ]))
    coco = COCO(os.path.join(toy_coco_root, 'annotations', 'instances_val.json'))
    assert len(dataset) == 4
    for index in range(len(dataset)):
        packed = dataset[index]
        sample = packed['data_samples']
        image_info = coco.loadImgs(sample.img_id)[0]
        assert tuple(packed['inputs'].shape) == (3, image_info['height'], image_info['width'])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=sample.img_id))
        gt = sample.gt_instances
        assert gt.labels.tolist() == [ann['category_id'] - 1 for ann in anns]
        masks = gt.masks.to_ndarray()
        assert len(masks) == len(anns) == len(gt.bboxes)
        for mask, box in zip(masks, gt.bboxes.tensor.numpy()):
            np.testing.assert_allclose(_mask_box(mask), box, atol=1)
