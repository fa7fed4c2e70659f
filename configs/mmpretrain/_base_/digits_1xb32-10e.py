# scikit-learn's handwritten digits (drconv_mmdet.mmpretrain.DigitsDataset: 1,257 train / 540 test
# real images, shipped with the package), upscaled from 8 x 8 to 32 x 32, for runs of minutes on a
# CPU. Training shifts each image by up to 4 pixels (zero fill); nothing else. SGD with momentum,
# the learning rate decayed linearly to 0 from the paper's ImageNet rate per image (0.5 for 1,024
# images, so 0.5 * 32 / 1024 here).
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['drconv_mmdet.mmpretrain'], allow_failed_imports=False)

image_size = 32
max_epochs = 10
learning_rate = 0.5 * 32 / 1024
data_preprocessor = dict(num_classes=10, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5])
train_pipeline = [
    dict(type='Resize', scale=(image_size, image_size)),
    dict(type='RandomCrop', crop_size=image_size, padding=image_size // 8),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=(image_size, image_size)),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=32,
                        num_workers=0,
                        dataset=dict(type='DigitsDataset', split='train', pipeline=train_pipeline),
                        sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(batch_size=64,
                      num_workers=0,
                      dataset=dict(type='DigitsDataset',
                                   split='test',
                                   test_mode=True,
                                   pipeline=test_pipeline),
                      sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='SGD', lr=learning_rate, momentum=0.9, weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR',
         power=1.0,
         eta_min=0.0,
         by_epoch=True,
         begin=0,
         end=max_epochs,
         convert_to_iter_based=True)
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
randomness = dict(seed=0)
