# The toy COCO instance-segmentation set that `make data` generates (tools/misc/make_toy_coco.py):
# circles, rectangles and triangles with polygon masks, 128 to 256 px images.
dataset_type = 'ToyCocoDataset'
data_root = 'data/toy_coco/'
backend_args = None
image_scale = (256, 256)

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=4,
                        num_workers=2,
                        persistent_workers=False,
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        batch_sampler=dict(type='AspectRatioBatchSampler'),
                        dataset=dict(type=dataset_type,
                                     data_root=data_root,
                                     ann_file='annotations/instances_train.json',
                                     data_prefix=dict(img='train/'),
                                     filter_cfg=dict(filter_empty_gt=True, min_size=4),
                                     pipeline=train_pipeline,
                                     backend_args=backend_args))
val_dataloader = dict(batch_size=4,
                      num_workers=2,
                      persistent_workers=False,
                      drop_last=False,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type=dataset_type,
                                   data_root=data_root,
                                   ann_file='annotations/instances_val.json',
                                   data_prefix=dict(img='val/'),
                                   test_mode=True,
                                   pipeline=test_pipeline,
                                   backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(type='CocoMetric',
                     ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'],
                     format_only=False,
                     backend_args=backend_args)
test_evaluator = val_evaluator
