#!/bin/sh
# Test an experiment's checkpoint with the precise evaluation (fragment voting over the config's test-time views),
# as the reference's scripts/test.sh (POSIX sh).
#
#   sh scripts/test.sh [-p PYTHON] [-m MACHINES] [-g GPUS] -d DATASET -n NAME [-w model_best] [-c CONFIG] [-- KEY=VALUE ...]
#
#   -p  python interpreter (default: python)
#   -m  number of machines (default: 1)
#   -g  processes (GPUs) per machine (default: the number of CUDA devices, 1 on a CPU machine); at most the visible
#       GPUs on a CUDA machine (to run N processes on the CPU with gloo there: CUDA_VISIBLE_DEVICES= sh scripts/...)
#   -d  config sub-folder configs/<d>/, also the experiment folder exp/<d>/ (default: demo)
#   -n  experiment name: tests exp/<d>/<n>/ (default: debug)
#   -w  checkpoint name in exp/<d>/<n>/model/ without .pth, or a path to a .pth file (default: model_best)
#   -c  config name in configs/<d>/ without .py (default: the run's own exp/<d>/<n>/config/config.py)
#   after --: config overrides passed to --options (e.g. -- test.fragment_batch_size=8 test.reuse_predictions=True)
#
# Environment: EXP_ROOT (default exp) is where experiment folders are.
# Outputs: exp/<d>/<n>/log/test.log and exp/<d>/<n>/result/ (<scene>_pred.npy, metrics.json, submit/ for ScanNet,
# <split>.pth for S3DIS). With N*M > 1 processes torchrun starts them as in scripts/train.sh (MASTER_ADDR, NODE_RANK,
# MASTER_PORT for several machines); each process tests a share of the scenes.
cd "$(dirname "$0")/.." || exit 1

PYTHON=python
NUM_MACHINE=1
NUM_GPU=
DATASET=demo
EXP_NAME=debug
WEIGHT=model_best
CONFIG=

while getopts "p:m:g:d:n:w:c:" opt; do
  case $opt in
    p) PYTHON=$OPTARG ;;
    m) NUM_MACHINE=$OPTARG ;;
    g) NUM_GPU=$OPTARG ;;
    d) DATASET=$OPTARG ;;
    n) EXP_NAME=$OPTARG ;;
    w) WEIGHT=$OPTARG ;;
    c) CONFIG=$OPTARG ;;
    *) echo "usage: sh scripts/test.sh [-p PYTHON] [-m MACHINES] [-g GPUS] -d DATASET -n NAME [-w WEIGHT] [-c CONFIG] [-- KEY=VALUE ...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

. scripts/launch.sh
check_counts

EXP_DIR=${EXP_ROOT:-exp}/$DATASET/$EXP_NAME
if [ -z "$CONFIG" ]; then CONFIG_PATH=$EXP_DIR/config/config.py; else CONFIG_PATH=configs/$DATASET/$CONFIG.py; fi
case $WEIGHT in
  */*|*.pth) WEIGHT_PATH=$WEIGHT ;;
  *) WEIGHT_PATH=$EXP_DIR/model/$WEIGHT.pth ;;
esac
if [ ! -f "$CONFIG_PATH" ]; then
  echo "error: config not found: $CONFIG_PATH (train exp/$DATASET/$EXP_NAME first, or pass -c CONFIG from configs/$DATASET/)" >&2; exit 2
fi
if [ ! -f "$WEIGHT_PATH" ]; then
  echo "error: checkpoint not found: $WEIGHT_PATH (available in $EXP_DIR/model/: $(ls "$EXP_DIR/model" 2>/dev/null | tr '\n' ' '))" >&2; exit 2
fi

echo "Experiment: $EXP_DIR | config: $CONFIG_PATH | weight: $WEIGHT_PATH | machines: $NUM_MACHINE x processes: $NUM_GPU | python: $PYTHON"

OPTIONS="save_path=$EXP_DIR weight=$WEIGHT_PATH"
launch tools/test.py "$@"
