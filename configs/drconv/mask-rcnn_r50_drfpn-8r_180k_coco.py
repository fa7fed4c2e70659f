# DRConv-MaskRCNN 8R of Table 3: the baseline schedule with 8-region DRConvs in two FPN layers,
# the 3x3 output convs of P2 and P3 (the paper does not say which two; see README).
_base_ = './mask-rcnn_r50_fpn_180k_coco.py'

model = dict(
    neck=dict(
        type='DRFPN',
        drconv_cfg=dict(type='DRConv', region_num=8, generator='paper'),
        drconv_layers=('fpn_convs.0', 'fpn_convs.1')))
