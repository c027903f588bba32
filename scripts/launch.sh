# Sourced by scripts/train.sh and scripts/test.sh (from the repository root): `launch tools/X.py [args]` runs the entry
# point once, or through torchrun when NUM_GPU x NUM_MACHINE > 1 (one machine: --standalone; several: NODE_RANK,
# MASTER_ADDR, MASTER_PORT, or the first host of SLURM_NODELIST). Reads PYTHON, CONFIG_PATH, NUM_GPU, NUM_MACHINE,
# DATASET, EXP_NAME and OPTIONS.
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
