# ImageNet on the DRConv paper's schedule (Sec. 4.1): 224 x 224 inputs, 240 epochs, the learning
# rate from 0.5 down to 0 linearly, otherwise ShuffleNetV2's training setting as mmpretrain has it
# (SGD with momentum 0.9, weight decay 4e-5 and none on the norms, 16 GPUs x 64 images) and
# mmpretrain's ImageNet pipeline (random resized crop and flip; resize to 256 and centre crop).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_pil_resize.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_linearlr_bn_nowd.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['drconv_mmdet.mmpretrain'], allow_failed_imports=False)

# PolyLR of power 1 decays linearly; updated every iteration.
param_scheduler = [
    dict(type='PolyLR',
         power=1.0,
         eta_min=0.0,
         by_epoch=True,
         begin=0,
         end=240,
         convert_to_iter_based=True)
]
train_cfg = dict(by_epoch=True, max_epochs=240, val_interval=1)
