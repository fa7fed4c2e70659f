# DRConv-MaskRCNN 8R of Table 3: the baseline schedule with 8-region DRConvs in two FPN layers,
# the 3x3 output convs of P2 and P3 (the paper does not say which two; see README). Filters from
# the 'basis' generator (8 shared kernels), not the paper's: in a from-scratch benchmark on real
# images (docs/learning.md) it ties with a plain 3x3 conv where the paper's generator, with or
# without a static kernel, falls 2 to 5 points behind, each at its best schedule, and it has the
# same parameter count.
_base_ = './mask-rcnn_r50_fpn_180k_coco.py'

model = dict(neck=dict(type='DRFPN',
                       drconv_cfg=dict(type='DRConv', region_num=8, generator='basis'),
                       drconv_layers=('fpn_convs.0', 'fpn_convs.1')))
