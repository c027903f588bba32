# Sourced by scripts/train.sh and scripts/test.sh (from the repository root): `launch tools/X.py [args]` runs the entry
# point once, or through torchrun when NUM_GPU x NUM_MACHINE > 1 (one machine: --standalone; several: NODE_RANK,
# MASTER_ADDR, MASTER_PORT, or the first host of SLURM_NODELIST). Reads PYTHON, CONFIG_PATH, NUM_GPU, NUM_MACHINE,
# DATASET, EXP_NAME and OPTIONS. `check_counts` validates -m and -g first (and sets NUM_GPU when -g was not given).

# positive_int FLAG VALUE WHAT: exit 2 with a message unless VALUE is a positive integer (no sign, no leading zero)
positive_int() {
  case $2 in
    ''|*[!0-9]*|0*) echo "error: $1 $2: $3 must be a positive integer, e.g. $1 1" >&2; exit 2 ;;
  esac
}

# check_counts: -m and -g must be positive integers; -g must not exceed the visible GPUs on a CUDA machine
# (sonata_nb.launch.num_gpus_main, which also gives the default: every visible GPU, 1 without CUDA). launch.py is
# loaded from its file: `import sonata_nb.launch` would import the whole package first (spconv's import alone takes
# about 7 s on a CPU), and launch.py needs only torch
check_counts() {
  positive_int -m "$NUM_MACHINE" "the number of machines"
  if [ -n "$NUM_GPU" ]; then positive_int -g "$NUM_GPU" "the number of processes (GPUs) per machine"; fi
  NUM_GPU=$($PYTHON -c 'import importlib.util as u
s = u.spec_from_file_location("sonata_nb_launch", "sonata_nb/launch.py")
m = u.module_from_spec(s); s.loader.exec_module(m); m.num_gpus_main()' "$NUM_GPU") || exit 2
}
launch() {
  script=$1; shift
  args="--config-file $CONFIG_PATH --num-gpus $NUM_GPU --num-machines $NUM_MACHINE"
  if [ $((NUM_GPU * NUM_MACHINE)) -le 1 ]; then
    exec $PYTHON "$script" $args --options $OPTIONS "$@"
  fi
  if [ "$NUM_MACHINE" -le 1 ]; then
    exec $PYTHON -m torch.distributed.run --standalone --nproc_per_node "$NUM_GPU" "$script" $args --options $OPTIONS "$@"
  fi
  NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
  if [ -z "$MASTER_ADDR" ] && [ -n "$SLURM_NODELIST" ]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_NODELIST" | head -n 1)
    MASTER_PORT=${MASTER_PORT:-$((10000 + 0x$(printf %s "$DATASET/$EXP_NAME" | md5sum | cut -c 1-4) % 20000))}
  fi
  if [ -z "$MASTER_ADDR" ]; then
    echo "error: -m $NUM_MACHINE needs MASTER_ADDR (address of machine 0) and NODE_RANK on every machine" >&2; exit 2
  fi
  exec $PYTHON -m torch.distributed.run --nnodes "$NUM_MACHINE" --node_rank "$NODE_RANK" --nproc_per_node "$NUM_GPU" \
    --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
    "$script" $args --machine-rank "$NODE_RANK" --options $OPTIONS "$@"
}
