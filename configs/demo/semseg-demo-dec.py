# Demo: decoder probing of the tiny demo model: the demo ft recipe with the encoder frozen (freeze_encoder=True),
# as ../sonata/semseg-sonata-v1m1-0b-scannet-dec.py. Without a weight the frozen encoder stays random; probe a
# trained one with its checkpoint:
#   sonata-train --config-file configs/demo/semseg-demo-dec.py \
#     --options save_path=exp/demo/semseg-demo-dec weight=exp/demo/semseg-demo-ft/model/model_best.pth
_base_ = "semseg-demo-ft.py"

model = dict(backbone=dict(freeze_encoder=True))
