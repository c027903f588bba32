#!/bin/sh
# Test an experiment's checkpoint with the precise evaluation (fragment voting over the config's test-time views).
#
#   sh scripts/test.sh -d DATASET -n EXP_NAME [-w model_best] [-c CONFIG] [-g NUM_GPU] [-m NUM_MACHINE] [-p PYTHON]
#
# -d  config sub-folder configs/<d>/ and experiment folder exp/<d>/ (default scannet)
# -n  experiment name: tests exp/<d>/<n>/ (default debug)
# -c  config name in configs/<d>/ without .py (default: the run's own exp/<d>/<n>/config/config.py)
# -w  checkpoint name in exp/<d>/<n>/model/ without .pth, or a path to a .pth file (default model_best)
# -g  GPUs per machine (default: all visible, at least 1); -m machines (default 1); torchrun when g*m > 1
# -p  python interpreter (default python)
# Outputs: exp/<d>/<n>/log/test.log and exp/<d>/<n>/result/ (predictions, metrics.json, submit/ for ScanNet).
cd "$(dirname "$(dirname "$0")")" || exit 1

PYTHON=python
DATASET=scannet
CONFIG=None
EXP_NAME=debug
WEIGHT=model_best
NUM_GPU=None
NUM_MACHINE=1

while getopts "p:d:c:n:w:g:m:" opt; do
  case $opt in
    p) PYTHON=$OPTARG ;;
    d) DATASET=$OPTARG ;;
    c) CONFIG=$OPTARG ;;
    n) EXP_NAME=$OPTARG ;;
    w) WEIGHT=$OPTARG ;;
    g) NUM_GPU=$OPTARG ;;
    m) NUM_MACHINE=$OPTARG ;;
    *) echo "usage: sh scripts/test.sh -d DATASET -n EXP_NAME [-w WEIGHT] [-c CONFIG] [-g NUM_GPU] [-m NUM_MACHINE] [-p PYTHON]"; exit 1 ;;
  esac
done

if [ "$NUM_GPU" = None ]; then
  NUM_GPU=$($PYTHON -c 'import torch; print(max(torch.cuda.device_count(), 1))') || exit 1
fi

EXP_DIR=exp/${DATASET}/${EXP_NAME}
if [ "$CONFIG" = None ]; then CONFIG_FILE=${EXP_DIR}/config/config.py; else CONFIG_FILE=configs/${DATASET}/${CONFIG}.py; fi
case $WEIGHT in
  */*|*.pth) WEIGHT_FILE=$WEIGHT ;;
  *) WEIGHT_FILE=${EXP_DIR}/model/${WEIGHT}.pth ;;
esac
[ -f "$CONFIG_FILE" ] || { echo "Config not found: $CONFIG_FILE (train first, or pass -c CONFIG from configs/${DATASET}/)"; exit 1; }
[ -f "$WEIGHT_FILE" ] || { echo "Checkpoint not found: $WEIGHT_FILE (pass -w NAME of a file in ${EXP_DIR}/model/)"; exit 1; }

echo "Experiment: $EXP_DIR"
echo "Config: $CONFIG_FILE"
echo "Weight: $WEIGHT_FILE"
echo "GPUs: $NUM_GPU x machines: $NUM_MACHINE"
export PYTHONPATH=./${PYTHONPATH:+:$PYTHONPATH}

if [ $((NUM_GPU * NUM_MACHINE)) -gt 1 ]; then
  if [ -n "$SLURM_NODELIST" ]; then
    MASTER_HOSTNAME=$(scontrol show hostname "$SLURM_NODELIST" | head -n 1)
    MASTER_ADDR=$(getent hosts "$MASTER_HOSTNAME" | awk '{ print $1 }')
  fi
  MASTER_PORT=${MASTER_PORT:-$((10000 + 0x$(echo -n "${DATASET}/${EXP_NAME}" | md5sum | cut -c 1-4) % 20000))}
  exec $PYTHON -m torch.distributed.run --nnodes="$NUM_MACHINE" --nproc_per_node="$NUM_GPU" --node_rank="${SLURM_NODEID:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$MASTER_PORT" \
    tools/test.py --config-file "$CONFIG_FILE" --options save_path="$EXP_DIR" weight="$WEIGHT_FILE"
else
  exec $PYTHON -u tools/test.py --config-file "$CONFIG_FILE" --options save_path="$EXP_DIR" weight="$WEIGHT_FILE"
fi
