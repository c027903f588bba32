#!/bin/sh
# Sonata recipe: S3DIS Area 5 linear probe (epoch 3000).
# The reference command: sh scripts/train.sh -m 1 -g 8 -d sonata -c semseg-sonata-v1m1-3a-s3dis-lin -n semseg-sonata-v1m1-0-base-3a-s3dis-lin -w <pretrained weight>
# Environment (WEIGHT, NUM_GPU, NUM_MACHINE, PYTHON, EXP_ROOT) and arguments: see recipe.sh.
. "$(dirname "$0")/recipe.sh"
run_recipe data/s3dis semseg-sonata-v1m1-3a-s3dis-lin "$@"
