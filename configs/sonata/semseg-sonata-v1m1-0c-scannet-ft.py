# Sonata full fine-tuning on ScanNet-20 (Pointcept configs/sonata/semseg-sonata-v1m1-0c-scannet-ft.py).
# The 0b recipe with the encoder trainable too (freeze_encoder=False); the "block" lr group (0.0002) now holds every
# encoder and decoder block, the rest (head, unpooling, embedding, pooling) trains at 0.002.
_base_ = "semseg-sonata-v1m1-0b-scannet-dec.py"

model = dict(backbone=dict(freeze_encoder=False))
