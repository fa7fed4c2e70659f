"""Mask R-CNN with DRFPN on the toy set: builds, trains, gets gradients where DRConv needs them."""
import copy

import pytest
import torch
from helpers import DEMO_CONFIG, DEMO_DRFPN_CONFIG, tiny_run_config
from mmdet.registry import DATASETS, MODELS
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

from drconv_mmdet.nn import DRConv2d


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def _toy_batch(cfg, size=2):
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    return pseudo_collate([dataset[i] for i in range(size)])


def _model_and_batch(config, data_root):
    cfg = tiny_run_config(config, data_root)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model, _toy_batch(cfg)


@pytest.mark.parametrize('config', [DEMO_CONFIG, DEMO_DRFPN_CONFIG])
def test_loss_and_predict(config, toy_coco_root):
    model, batch = _model_and_batch(config, toy_coco_root)
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(batch, False), mode='predict')
    assert len(results) == 2
    assert results[0].pred_instances.masks.shape[-2:] == results[0].ori_shape


@pytest.mark.slow
def test_drfpn_overfits_and_trains_its_drconvs(toy_coco_root):
    model, batch = _model_and_batch(DEMO_DRFPN_CONFIG, toy_coco_root)
    drconvs = {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}
    assert sorted(drconvs) == ['neck.fpn_convs.0.conv', 'neck.fpn_convs.1.conv']
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = model.data_preprocessor(batch, True)
    totals = []
    for step in range(12):
        total, _ = model.parse_losses(model(**data, mode='loss'))
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        if step == 0:
            for name, layer in drconvs.items():
                for param_name, param in layer.named_parameters():
                    assert param.grad is not None and param.grad.abs().sum() > 0, \
                        f'{name}.{param_name} got no gradient'
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3, totals
