# Table 1, baseline: ShuffleNetV2 0.5x.
_base_ = [
    'mmpretrain::_base_/models/shufflenet_v2_1x.py',
    './_base_/drconv-paper_16xb64-240e_in1k.py',
]
model = dict(backbone=dict(widen_factor=0.5))
