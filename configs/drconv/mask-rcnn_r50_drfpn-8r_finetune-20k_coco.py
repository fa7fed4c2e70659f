# DRConv-MaskRCNN 8R fine-tuned from a trained plain Mask R-CNN R50-FPN instead of trained from
# ImageNet weights. The DRConvs start as the plain P2/P3 output convs (every region's filter is
# the plain 3x3 weight), so training starts at the plain model's accuracy. Make the starting
# checkpoint from mmdet's Mask R-CNN R50-FPN 2x (box AP 39.2, mask AP 35.4 in mmdet's model zoo):
#   python tools/model_converters/plain_to_drconv.py \
#       https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_2x_coco/mask_rcnn_r50_fpn_2x_coco_bbox_mAP-0.392__segm_mAP-0.354_20200505_003907-3e542a40.pth \  # noqa: E501
#       configs/drconv/mask-rcnn_r50_drfpn-8r_finetune-20k_coco.py \
#       checkpoints/mask-rcnn_r50_drfpn-8r_from-plain.pth
# The schedule is ours, not the paper's (the paper trains every model from ImageNet weights,
# Sec. 4.3) and has not been tuned: 20k iterations at batch 16, a tenth of the 180k schedule's
# learning rate, x 0.1 at 15k.
_base_ = './mask-rcnn_r50_drfpn-8r_180k_coco.py'

model = dict(
    # Every weight comes from load_from; no ImageNet download before it.
    backbone=dict(init_cfg=None))
load_from = 'checkpoints/mask-rcnn_r50_drfpn-8r_from-plain.pth'

max_iters = 20000
interval = 5000
train_cfg = dict(max_iters=max_iters, val_interval=interval)
optim_wrapper = dict(optimizer=dict(lr=0.002))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.33, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[15000], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=interval))
