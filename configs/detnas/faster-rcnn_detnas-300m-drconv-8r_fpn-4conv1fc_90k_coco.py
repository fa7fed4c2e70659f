# DRConv-DetNAS-300M 8R: the 1x1 convs of the searched branches become 8-region DRConvs whose
# filters mix 8 shared bases per sample, as in the official DRConv code ('basis' generator). Not the
# paper's generator: in a from-scratch benchmark on real images (docs/learning.md) 'basis' ties
# with plain 1x1 convs in ShuffleNetV2-like blocks where the paper's falls 3.5 points behind, and
# it takes the backbone from 1.85 M to 13.5 M parameters where the paper's would take it to 115.6 M.
# The projection 1x1 of the stride-2 blocks stays plain (official code) and every DRConv has its
# own guide (paper); drconv_proj=True / shared_guide=True select the alternatives.
# Initialisation: the ImageNet-pretrained plain DetNAS-300M of the base config (Sec. 4.3 of the
# paper initialises the backbone from ImageNet weights). Each DRConv starts from the plain 1x1
# weight at its position, as DRConv2d.from_conv does: every region's filter is that weight, so
# the backbone starts computing what the pretrained one computes; the guide convs are new. This
# is how we reproduce the paper's initialisation (it does not say how its DRConvs were
# initialised from the plain weights).
_base_ = './faster-rcnn_detnas-300m_fpn-4conv1fc_90k_coco.py'

model = dict(
    backbone=dict(drconv_cfg=dict(type='DRConv', region_num=8, generator='basis', num_bases=8),
                  drconv_proj=False,
                  shared_guide=False))
