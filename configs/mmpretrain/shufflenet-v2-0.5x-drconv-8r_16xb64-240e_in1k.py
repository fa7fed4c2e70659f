# Table 1: DRConv-ShuffleNetV2 0.5x, every 1x1 conv a DRConv with 8 regions.
_base_ = './shufflenet-v2-0.5x_16xb64-240e_in1k.py'
model = dict(backbone=dict(type='DRShuffleNetV2', region_num=8, generator='basis'))
