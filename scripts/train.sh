#!/bin/sh
# Train a segmentor from a config, as the reference's scripts/train.sh (POSIX sh).
#
#   sh scripts/train.sh [-p PYTHON] [-m MACHINES] [-g GPUS] -d DATASET -c CONFIG [-n NAME] [-w WEIGHT] [-r true|false] [-- KEY=VALUE ...]
#
#   -p  python interpreter (default: python)
#   -m  number of machines (default: 1)
#   -g  processes (GPUs) per machine (default: the number of CUDA devices, 1 on a CPU machine); at most the visible
#       GPUs on a CUDA machine (to run N processes on the CPU with gloo there: CUDA_VISIBLE_DEVICES= sh scripts/...)
#   -d  config sub-folder configs/<d>/, also the experiment folder exp/<d>/ (default: demo)
#   -c  config name, without .py (required)
#   -n  experiment name: outputs go to exp/<d>/<n>/ (default: debug)
#   -w  pretrained weight (a path; default: the config's `weight`)
#   -r  true: resume exp/<d>/<n>/ from config/config.py and model/model_last.pth (default: false)
#   after --: config overrides passed to --options (e.g. -- epoch=8 batch_size=4 enable_wandb=False)
#
# Environment: EXP_ROOT (default exp) is where experiment folders go.
#
# With -g N -m M and N*M > 1 the processes are started by torchrun (NCCL between GPUs, gloo on a CPU machine):
#   one machine:   torchrun --standalone --nproc_per_node N
#   M machines:    torchrun --nnodes M --node_rank R --nproc_per_node N --master_addr A --master_port P
# where R = $NODE_RANK (or $SLURM_NODEID), A = $MASTER_ADDR and P = $MASTER_PORT (default 29500). Under SLURM,
# A and P default to the first node of $SLURM_NODELIST and a port derived from the experiment name.
#
# Two machines of 8 GPUs each (run the same command on both; node 0 is the one at MASTER_ADDR):
#   machine 0:  MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NODE_RANK=0 sh scripts/train.sh -m 2 -g 8 -d sonata -c CONFIG -n NAME -w WEIGHT
#   machine 1:  MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NODE_RANK=1 sh scripts/train.sh -m 2 -g 8 -d sonata -c CONFIG -n NAME -w WEIGHT
# Both machines must see the same data paths; only node 0 writes the experiment folder.
cd "$(dirname "$0")/.." || exit 1

PYTHON=python
NUM_MACHINE=1
NUM_GPU=
DATASET=demo
CONFIG=
EXP_NAME=debug
WEIGHT=
RESUME=false

while getopts "p:m:g:d:c:n:w:r:" opt; do
  case $opt in
    p) PYTHON=$OPTARG ;;
    m) NUM_MACHINE=$OPTARG ;;
    g) NUM_GPU=$OPTARG ;;
    d) DATASET=$OPTARG ;;
    c) CONFIG=$OPTARG ;;
    n) EXP_NAME=$OPTARG ;;
    w) WEIGHT=$OPTARG ;;
    r) RESUME=$OPTARG ;;
    *) echo "usage: sh scripts/train.sh [-p PYTHON] [-m MACHINES] [-g GPUS] -d DATASET -c CONFIG [-n NAME] [-w WEIGHT] [-r true|false] [-- KEY=VALUE ...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

if [ -z "$CONFIG" ]; then
  echo "error: -c CONFIG is required (a file name in configs/$DATASET/ without .py)" >&2; exit 2
fi
. scripts/launch.sh
check_counts

EXP_DIR=${EXP_ROOT:-exp}/$DATASET/$EXP_NAME
CONFIG_PATH=configs/$DATASET/$CONFIG.py
OPTIONS="save_path=$EXP_DIR"

if [ "$RESUME" = true ]; then
  if [ -f "$EXP_DIR/model/model_last.pth" ] && [ -f "$EXP_DIR/config/config.py" ]; then
    CONFIG_PATH=$EXP_DIR/config/config.py
    OPTIONS="$OPTIONS resume=true weight=$EXP_DIR/model/model_last.pth"
  else
    echo "Nothing to resume in $EXP_DIR (no model/model_last.pth or config/config.py): starting a new run"
    RESUME=false
  fi
fi
if [ "$RESUME" != true ]; then
  if [ ! -f "$CONFIG_PATH" ]; then
    echo "error: config not found: $CONFIG_PATH (available in configs/$DATASET/: $(ls "configs/$DATASET" 2>/dev/null | tr '\n' ' '))" >&2
    exit 2
  fi
  if [ -n "$WEIGHT" ]; then OPTIONS="$OPTIONS weight=$WEIGHT"; fi
fi

echo "Experiment: $EXP_DIR | config: $CONFIG_PATH | machines: $NUM_MACHINE x processes: $NUM_GPU | python: $PYTHON"
ulimit -n 65536 2>/dev/null || true

launch tools/train.py "$@"
