# Sonata decoder probing on ScanNet-200 (Pointcept configs/sonata/semseg-sonata-v1m1-1b-scannet200-dec.py):
# the 1a recipe with the decoder of 0b.
_base_ = "semseg-sonata-v1m1-1a-scannet200-lin.py"

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
