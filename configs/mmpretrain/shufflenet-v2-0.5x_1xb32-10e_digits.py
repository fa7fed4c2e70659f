# ShuffleNetV2 0.5x on the digits: the plain network of the small real-data run.
_base_ = [
    'mmpretrain::_base_/models/shufflenet_v2_1x.py',
    './_base_/digits_1xb32-10e.py',
]
model = dict(backbone=dict(widen_factor=0.5), head=dict(num_classes=10, topk=(1, )))
