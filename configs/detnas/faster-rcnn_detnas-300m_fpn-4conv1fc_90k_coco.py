# Faster R-CNN with the DetNAS-COCO-FPN-300M backbone, set up as the official DetNAS detector
# (configs/e2e_faster_rcnn_DETNAS_COCO_FPN_300M_1x.yaml of megvii-model/DetNAS).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['drconv_mmdet'], allow_failed_imports=False)

# DetNAS trains every layer with SyncBN, momentum 0.01 in PyTorch's convention.
norm_cfg = dict(type='SyncBN', momentum=0.01, eps=1e-5, requires_grad=True)

model = dict(
    # The ImageNet weights were trained on raw BGR 0-255 images.
    data_preprocessor=dict(mean=[0., 0., 0.], std=[1., 1., 1.], bgr_to_rgb=False),
    backbone=dict(
        _delete_=True,
        type='DetNAS',
        arch='COCO-FPN-300M',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        # Produce this file from the official ImageNet weights (COCO_FPN_300M.pkl) with
        # python tools/model_converters/detnas_to_mmdet.py COCO_FPN_300M.pkl \
        #     checkpoints/detnas-coco-fpn-300m_mmdet.pth
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/detnas-coco-fpn-300m_mmdet.pth')),
    neck=dict(in_channels=[64, 160, 320, 640], norm_cfg=norm_cfg),
    roi_head=dict(bbox_roi_extractor=dict(roi_layer=dict(sampling_ratio=2)),
                  bbox_head=dict(type='Shared4Conv1FCBBoxHead',
                                 conv_out_channels=256,
                                 norm_cfg=norm_cfg)))

# 16 images per iteration (8 GPUs x 2), 90k iterations, steps at 60k and 80k.
max_iters = 90000
interval = 10000
train_dataloader = dict(batch_size=2, sampler=dict(type='InfiniteSampler'))
train_cfg = dict(_delete_=True,
                 type='IterBasedTrainLoop',
                 max_iters=max_iters,
                 val_interval=interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR',
         begin=0,
         end=max_iters,
         by_epoch=False,
         milestones=[60000, 80000],
         gamma=0.1)
]
# Biases get twice the learning rate and no weight decay, as in maskrcnn-benchmark.
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
                     paramwise_cfg=dict(bias_lr_mult=2., bias_decay_mult=0.))

default_hooks = dict(logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
                     checkpoint=dict(type='CheckpointHook',
                                     by_epoch=False,
                                     interval=interval,
                                     max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=16)
