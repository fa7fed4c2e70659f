# The demo model: the CPU-sized Mask R-CNN of mask-rcnn_r18_fpn_toy-coco.py with 8-region DRConvs
# in the FPN's P2 and P3 output convs, as in the 8R config of the paper's schedule.
_base_ = './mask-rcnn_r18_fpn_toy-coco.py'

model = dict(neck=dict(type='DRFPN',
                       drconv_cfg=dict(type='DRConv', region_num=8),
                       drconv_layers=('fpn_convs.0', 'fpn_convs.1')))
