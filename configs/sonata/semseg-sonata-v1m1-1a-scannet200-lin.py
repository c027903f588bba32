# Sonata linear probing on ScanNet-200 (Pointcept configs/sonata/semseg-sonata-v1m1-1a-scannet200-lin.py).
# The 0a recipe with the 200-class labels (segment200.npy) and a Linear(1232, 200) head.
from sonata_nb.classes import CLASS_LABELS_200

_base_ = "semseg-sonata-v1m1-0a-scannet-lin.py"

model = dict(num_classes=200)

dataset_type = "ScanNet200Dataset"
data = dict(
    num_classes=200,
    names=CLASS_LABELS_200,
    train=dict(type=dataset_type),
    val=dict(type=dataset_type),
    test=dict(type=dataset_type),
)
