# DRConv-ShuffleNetV2 0.5x on the digits: every 1x1 conv a DRConv with 8 regions.
_base_ = './shufflenet-v2-0.5x_1xb32-10e_digits.py'
model = dict(backbone=dict(type='DRShuffleNetV2', region_num=8, generator='basis'))
