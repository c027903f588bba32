# Demo: linear probing of the tiny demo encoder, as ../sonata/semseg-sonata-v1m1-0a-scannet-lin.py: the encoder
# (no decoder) is frozen, its five stages are up-cast and concatenated (16+32+48+64+96 = 256 channels per point)
# and only a Linear(256, 20) trains. A frozen encoder needs a weight: train semseg-demo-ft first, then
#   sonata-train --config-file configs/demo/semseg-demo-lin.py \
#     --options save_path=exp/demo/semseg-demo-lin weight=exp/demo/semseg-demo-ft/model/model_best.pth
_base_ = "semseg-demo-ft.py"

model = dict(
    backbone_out_channels=256,
    backbone=dict(enc_mode=True, freeze_encoder=False),
    freeze_backbone=True,
)
