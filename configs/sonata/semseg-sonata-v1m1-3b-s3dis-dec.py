# Sonata decoder probing on S3DIS Area 5 (Pointcept configs/sonata/semseg-sonata-v1m1-3b-s3dis-dec.py):
# the 3a recipe with the decoder of 0b.
_base_ = "semseg-sonata-v1m1-3a-s3dis-lin.py"

model = dict(
    backbone_out_channels=64,
    backbone=dict(
        dec_depths=(2, 2, 2, 2),
        dec_channels=(64, 96, 192, 384),
        dec_num_head=(4, 6, 12, 24),
        dec_patch_size=(1024, 1024, 1024, 1024),
        enc_mode=False,
        freeze_encoder=True,
    ),
    freeze_backbone=False,
)
