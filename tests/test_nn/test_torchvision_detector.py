"""DRConv in a detector written elsewhere: torchvision's Mask R-CNN R50-FPN, converted by name."""
import pytest
import torch

from drconv_mmdet.nn import DRConv2d, convert_to_drconv

detection = pytest.importorskip('torchvision.models.detection',
                                reason='the example model comes from torchvision')

# The FPN output (3x3) convs of P2 and P3, the two highest-resolution levels.
FPN_P2_P3 = ['backbone.fpn.layer_blocks.0.0', 'backbone.fpn.layer_blocks.1.0']


def _mask_rcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    # Small images and few proposals keep the test fast; a zero score threshold keeps the
    # detections of the untrained model, so that the comparison has boxes to compare.
    return detection.maskrcnn_resnet50_fpn(weights=None,
                                           weights_backbone=None,
                                           min_size=64,
                                           max_size=64,
                                           rpn_pre_nms_top_n_train=100,
                                           rpn_post_nms_top_n_train=30,
                                           rpn_pre_nms_top_n_test=100,
                                           rpn_post_nms_top_n_test=30,
                                           rpn_batch_size_per_image=32,
                                           box_batch_size_per_image=16,
                                           box_score_thresh=0.0,
                                           box_detections_per_img=3)


def test_eval_outputs_unchanged_at_conversion():
    # float64, so that the detections' order does not hang on rounding.
    model = _mask_rcnn().double().eval()
    images = [
        torch.rand(3, 48, 64, dtype=torch.float64),
        torch.rand(3, 64, 40, dtype=torch.float64)
    ]
    with torch.no_grad():
        expected = model(images)
    assert convert_to_drconv(model, FPN_P2_P3, region_num=8, generator='basis') == FPN_P2_P3
    assert all(isinstance(model.get_submodule(name), DRConv2d) for name in FPN_P2_P3)
    with torch.no_grad():
        actual = model(images)
    assert [len(out['boxes']) for out in expected] == [3, 3]
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


def test_training_step_reaches_every_drconv_parameter():
    model = _mask_rcnn()
    convert_to_drconv(model, FPN_P2_P3, region_num=8, generator='basis')
    model.train()
    masks = torch.zeros(2, 56, 64, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 20:50, 30:60] = 1
    targets = [
        dict(boxes=torch.tensor([[10., 8., 40., 30.], [30., 20., 60., 50.]]),
             labels=torch.tensor([1, 3]),
             masks=masks),
        dict(boxes=torch.tensor([[5., 5., 30., 45.]]),
             labels=torch.tensor([2]),
             masks=masks[:1, :, :48].clone()),
    ]
    images = [torch.rand(3, 56, 64), torch.rand(3, 56, 48)]
    losses = model(images, targets)
    assert set(losses) == {
        'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'
    }
    assert all(torch.isfinite(loss) for loss in losses.values()), losses
    sum(losses.values()).backward()
    for name in FPN_P2_P3:
        for param_name, param in model.get_submodule(name).named_parameters():
            assert param.grad is not None, f'{name}.{param_name}'
            assert torch.isfinite(param.grad).all(), f'{name}.{param_name}'
