#!/bin/sh
# Sonata recipe: ScanNet-20 decoder probe (frozen encoder, trained 4-stage decoder).
# The reference command: sh scripts/train.sh -m 1 -g 8 -d sonata -c semseg-sonata-v1m1-0b-scannet-dec -n semseg-sonata-v1m1-0-base-0b-scannet-dec -w <pretrained weight>
# Environment (WEIGHT, NUM_GPU, NUM_MACHINE, PYTHON, EXP_ROOT) and arguments: see recipe.sh.
. "$(dirname "$0")/recipe.sh"
run_recipe data/scannet semseg-sonata-v1m1-0b-scannet-dec "$@"
