# DRConv-DetNAS-300M 8R: the 1x1 convs of the searched branches become 8-region DRConvs whose
# filters mix 8 shared bases per sample, as in the official DRConv code. The projection 1x1 of
# the stride-2 blocks stays plain (official code) and every DRConv has its own guide (paper);
# drconv_proj=True / shared_guide=True select the alternatives. The pretrained plain 1x1 weights
# at DRConv positions are skipped with a warning; the other weights load.
_base_ = './faster-rcnn_detnas-300m_fpn-4conv1fc_90k_coco.py'

model = dict(
    backbone=dict(
        drconv_cfg=dict(type='DRConv', region_num=8, generator='basis', num_bases=8),
        drconv_proj=False,
        shared_guide=False))
