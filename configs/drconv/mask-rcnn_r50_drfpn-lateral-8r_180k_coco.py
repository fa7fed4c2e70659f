# The 8R config with its two DRConvs moved to the 1x1 lateral convs of P2 and P3: the layer choice
# that keeps training and inference near the baseline's speed (README, "End to end"). Not a
# configuration of the paper's Table 3, which does not name its two layers.
_base_ = './mask-rcnn_r50_drfpn-8r_180k_coco.py'

model = dict(neck=dict(drconv_layers=('lateral_convs.0', 'lateral_convs.1')))
