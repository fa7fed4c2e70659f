# A CPU-sized Mask R-CNN for the toy COCO set: ResNet-18 from scratch (no download), a 64-channel
# FPN, 256 px images, 300 iterations, small enough to train without a GPU; `make demo` runs its
# DRConv twin, mask-rcnn_r18_drfpn-8r_toy-coco.py.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/datasets/toy-coco_instance.py',
]
custom_imports = dict(imports=['drconv_mmdet'], allow_failed_imports=False)

num_classes = 3
channels = 64
model = dict(backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
             neck=dict(in_channels=[64, 128, 256, 512], out_channels=channels),
             rpn_head=dict(in_channels=channels, feat_channels=channels),
             roi_head=dict(bbox_roi_extractor=dict(out_channels=channels),
                           bbox_head=dict(in_channels=channels,
                                          fc_out_channels=256,
                                          num_classes=num_classes),
                           mask_roi_extractor=dict(out_channels=channels),
                           mask_head=dict(in_channels=channels,
                                          conv_out_channels=channels,
                                          num_classes=num_classes)),
             train_cfg=dict(rcnn=dict(sampler=dict(num=128))),
             test_cfg=dict(rcnn=dict(max_per_img=50)))

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    # Training from scratch on a tiny set: clipping keeps the first iterations stable.
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR',
         begin=0,
         end=max_iters,
         by_epoch=False,
         milestones=[220, 270],
         gamma=0.1),
]
default_hooks = dict(logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
                     checkpoint=dict(type='CheckpointHook',
                                     by_epoch=False,
                                     interval=100,
                                     max_keep_ckpts=2))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=4)
