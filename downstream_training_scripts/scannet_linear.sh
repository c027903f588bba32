#!/bin/sh
# Sonata recipe: ScanNet-20 linear probe (frozen encoder, 1232-channel up-cast, Linear head).
# The reference command: sh scripts/train.sh -m 1 -g 8 -d sonata -c semseg-sonata-v1m1-0a-scannet-lin -n semseg-sonata-v1m1-0-base-0a-scannet-lin -w <pretrained weight>
#
#   WEIGHT      pretrained Sonata weight (default exp/sonata/pretrain-sonata-v1m1-0-base/model/model_last.pth;
#               the released facebook/sonata pretrain-sonata-v1m1-0-base.pth or sonata.pth work too)
#   NUM_GPU     processes (GPUs) per machine (default: every CUDA device); NUM_MACHINE machines (default 1),
#               see scripts/train.sh for MASTER_ADDR / NODE_RANK on several machines
#   PYTHON      interpreter (default python); EXP_ROOT experiment root (default exp)
#   (relative paths are from the repository root)
#   arguments   passed on to scripts/train.sh, e.g. -r true to resume, or -- enable_wandb=False
cd "$(dirname "$0")/.." || exit 1
WEIGHT=${WEIGHT:-exp/sonata/pretrain-sonata-v1m1-0-base/model/model_last.pth}
if [ ! -f "$WEIGHT" ]; then
  echo "error: pretrained weight not found: $WEIGHT. Download pretrain-sonata-v1m1-0-base.pth from huggingface.co/facebook/sonata and set WEIGHT=/path/to/it" >&2
  exit 2
fi
if [ ! -d "data/scannet" ]; then
  echo "error: data folder not found: data/scannet (the config's data_root). Preprocess the raw data with python -m sonata_nb.preprocess (see nbs/14_preprocess.ipynb) or link it there" >&2
  exit 2
fi
exec sh scripts/train.sh -p "${PYTHON:-python}" -m "${NUM_MACHINE:-1}" ${NUM_GPU:+-g "$NUM_GPU"} -d sonata \
  -c semseg-sonata-v1m1-0a-scannet-lin -n semseg-sonata-v1m1-0-base-0a-scannet-lin -w "$WEIGHT" "$@"
