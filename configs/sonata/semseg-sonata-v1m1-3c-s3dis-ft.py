# Sonata full fine-tuning on S3DIS Area 5 (Pointcept configs/sonata/semseg-sonata-v1m1-3c-s3dis-ft.py):
# the 3b recipe with the encoder trainable too.
_base_ = "semseg-sonata-v1m1-3b-s3dis-dec.py"

model = dict(backbone=dict(freeze_encoder=False))
