# Sonata decoder probing on ScanNet-20 (Pointcept configs/sonata/semseg-sonata-v1m1-0b-scannet-dec.py).
# The 0a recipe with a new 4-stage decoder trained on a frozen encoder (freeze_encoder=True) and a Linear(64, 20) head.
# Same optimizer, schedule, data and hooks; the "block" lr group (0.0002) holds the decoder blocks.
_base_ = "semseg-sonata-v1m1-0a-scannet-lin.py"

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
