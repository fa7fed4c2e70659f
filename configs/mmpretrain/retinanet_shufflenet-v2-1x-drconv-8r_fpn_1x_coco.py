# RetinaNet with a DRConv-ShuffleNetV2 1x backbone (every 1x1 conv a DRConv with 8 regions), taken
# from mmpretrain's registry by scope. The backbone starts from mmpretrain's ImageNet ShuffleNetV2
# 1x: its plain 1x1 weights start the DRConvs (every region's filter is the plain weight).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['drconv_mmdet', 'drconv_mmdet.mmpretrain'],
                      allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.DRShuffleNetV2',
        widen_factor=1.0,
        region_num=8,
        generator='basis',
        out_indices=(0, 1, 2),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(type='Pretrained',
                      prefix='backbone.',
                      checkpoint='https://download.openmmlab.com/mmclassification/v0/shufflenet_v2/'
                      'shufflenet_v2_batch1024_imagenet_20200812-5bf4721e.pth'),
    ),
    neck=dict(in_channels=[116, 232, 464], start_level=0, add_extra_convs='on_output'),
)
