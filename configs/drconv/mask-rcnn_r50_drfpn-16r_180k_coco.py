# DRConv-MaskRCNN 16R of Table 3: the 8R config with 16-region DRConvs in the same two FPN layers.
_base_ = './mask-rcnn_r50_drfpn-8r_180k_coco.py'

model = dict(neck=dict(drconv_cfg=dict(region_num=16)))
