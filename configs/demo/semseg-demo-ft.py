# Demo: full training of a tiny PTv3 on the generated demo rooms (sonata_nb.demo), CPU-friendly.
# The Sonata ft recipe (../sonata/semseg-sonata-v1m1-0c-scannet-ft.py: same criteria, AdamW + OneCycle schedule,
# lr groups, Mix3D, augmentations, validation and hooks) with a ~1M-parameter backbone, smaller batches and crops,
# a higher learning rate (see below), a 2-view test. No pretrained weight is needed (weight=None trains from scratch).
#   sonata-train --config-file configs/demo/semseg-demo-ft.py --options save_path=exp/demo/semseg-demo-ft
_base_ = "../sonata/semseg-sonata-v1m1-0c-scannet-ft.py"

batch_size = 4
num_worker = 2
enable_amp = False
epoch = 48  # 8 train/validation cycles of 6 passes over the 24 rooms: 288 steps, about 4 minutes on 2 CPU cores
eval_epoch = 8

# Training from scratch needs a higher learning rate than the recipe's 0.002 / 0.0002 (which fine-tune a pretrained
# encoder): 0.01 for every group reaches a validation mIoU of about 0.2 in 288 steps, against 0.07 with the recipe's.
optimizer = dict(lr=0.01)
scheduler = dict(max_lr=[0.01, 0.01])
param_dicts = [dict(keyword="block", lr=0.01)]

model = dict(
    backbone_out_channels=16,
    backbone=dict(
        enc_depths=(1, 1, 1, 1, 1),
        enc_channels=(16, 32, 48, 64, 96),
        enc_num_head=(1, 2, 3, 4, 6),
        enc_patch_size=(128, 128, 128, 128, 128),
        dec_depths=(1, 1, 1, 1),
        dec_channels=(16, 32, 48, 64),
        dec_num_head=(1, 2, 3, 4),
        dec_patch_size=(128, 128, 128, 128),
    ),
)

dataset_type = "DemoDataset"
data_root = "data/demo"  # written on first use (24 train and 6 val rooms)

data = dict(
    train=dict(
        type=dataset_type,
        data_root=data_root,
        transform=[
            dict(type="CenterShift", apply_z=True),
            dict(type="RandomDropout", dropout_ratio=0.2, dropout_application_ratio=1.0),
            dict(type="RandomRotate", angle=[-1, 1], axis="z", center=[0, 0, 0], p=0.5),
            dict(type="RandomRotate", angle=[-1 / 64, 1 / 64], axis="x", p=0.5),
            dict(type="RandomRotate", angle=[-1 / 64, 1 / 64], axis="y", p=0.5),
            dict(type="RandomScale", scale=[0.9, 1.1]),
            dict(type="RandomFlip", p=0.5),
            dict(type="RandomJitter", sigma=0.005, clip=0.02),
            dict(type="ElasticDistortion", distortion_params=[[0.2, 0.4], [0.8, 1.6]]),
            dict(type="ChromaticAutoContrast", p=0.2, blend_factor=None),
            dict(type="ChromaticTranslation", p=0.95, ratio=0.05),
            dict(type="ChromaticJitter", p=0.95, std=0.05),
            dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="train", return_grid_coord=True),
            dict(type="SphereCrop", point_max=4096, mode="random"),  # recipe: 102400
            dict(type="CenterShift", apply_z=False),
            dict(type="NormalizeColor"),
            dict(type="ToTensor"),
            dict(type="Collect", keys=("coord", "grid_coord", "segment"), feat_keys=("coord", "color", "normal")),
        ],
    ),
    val=dict(type=dataset_type, data_root=data_root),
    test=dict(
        type=dataset_type,
        data_root=data_root,
        test_cfg=dict(
            aug_transform=[
                [dict(type="RandomRotateTargetAngle", angle=[0], axis="z", center=[0, 0, 0], p=1)],
                [dict(type="RandomRotateTargetAngle", angle=[1 / 2], axis="z", center=[0, 0, 0], p=1)],
            ],
        ),
    ),
)
