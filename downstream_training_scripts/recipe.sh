# Sourced by the recipe scripts in this folder: `run_recipe DATA_DIR CONFIG [train.sh arguments]` checks the weight and
# the data folder, then runs scripts/train.sh with the reference experiment name semseg-sonata-v1m1-0-base-<recipe>.
#
#   WEIGHT      pretrained Sonata weight (default exp/sonata/pretrain-sonata-v1m1-0-base/model/model_last.pth;
#               the released facebook/sonata pretrain-sonata-v1m1-0-base.pth or sonata.pth work too, and so does
#               the hub name facebook/sonata)
#   NUM_GPU     processes (GPUs) per machine (default: every CUDA device); NUM_MACHINE machines (default 1),
#               see scripts/train.sh for MASTER_ADDR / NODE_RANK on several machines
#   PYTHON      interpreter (default python); EXP_ROOT experiment root (default exp)
#   (relative paths are from the repository root)
#   arguments   passed on to scripts/train.sh, e.g. -r true to resume, or -- enable_wandb=False
run_recipe() {
  data_dir=$1; config=$2; shift 2
  cd "$(dirname "$0")/.." || exit 1
  WEIGHT=${WEIGHT:-exp/sonata/pretrain-sonata-v1m1-0-base/model/model_last.pth}
  case "$WEIGHT" in
    facebook/sonata|sonata) ;;  # hub names: load_weights fetches them (or says where to put the file)
    *) if [ ! -f "$WEIGHT" ]; then
         echo "error: pretrained weight not found: $WEIGHT. Download pretrain-sonata-v1m1-0-base.pth from huggingface.co/facebook/sonata and set WEIGHT=/path/to/it (or WEIGHT=facebook/sonata)" >&2
         exit 2
       fi ;;
  esac
  if [ ! -d "$data_dir" ]; then
    echo "error: data folder not found: $data_dir (the config's data_root). Preprocess the raw data with python -m sonata_nb.preprocess (see nbs/14_preprocess.ipynb) or link it there" >&2
    exit 2
  fi
  exec sh scripts/train.sh -p "${PYTHON:-python}" -m "${NUM_MACHINE:-1}" ${NUM_GPU:+-g "$NUM_GPU"} -d sonata \
    -c "$config" -n "semseg-sonata-v1m1-0-base-${config#semseg-sonata-v1m1-}" -w "$WEIGHT" "$@"
}
