# Table 1: DRConv-MobileNetV2 1x, every 1x1 conv a DRConv with 8 regions.
_base_ = './mobilenet-v2_16xb64-240e_in1k.py'
model = dict(backbone=dict(type='DRMobileNetV2', region_num=8, generator='basis'))
