# Sonata full fine-tuning on ScanNet-200 (Pointcept configs/sonata/semseg-sonata-v1m1-1c-scannet200-ft.py):
# the 1b recipe with the encoder trainable too.
_base_ = "semseg-sonata-v1m1-1b-scannet200-dec.py"

model = dict(backbone=dict(freeze_encoder=False))
