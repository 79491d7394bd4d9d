#!/bin/bash
# SLURM array: pack COCO train2014 on N machines, one array task per part, then join.
#   sbatch launch/pack_coco_slurm.sh            # the 16 parts (array index → --part INDEX/16)
#   sbatch --dependency=afterok:JOBID --array=0 --export=ALL,JOIN=1 launch/pack_coco_slurm.sh   # the join
# Every part writes its shards and their statistics into the same --out on a shared file system (the parts
# never write the same file); the join checks that every shard is there, intact and packed with the same
# flags, and writes meta.json, byte-identical to a one-machine pack. A part that was pre-empted or failed
# is re-run with the same command: --resume keeps its finished shards. Each part is CPU work only (SLIC):
# give it every core of its node. Give every part, and the join, the same flags.
#SBATCH --job-name=pack-coco
#SBATCH --array=0-15
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=64
#SBATCH --time=01:00:00
#SBATCH --signal=TERM@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out

set -euo pipefail
PARTS=16                      # = the size of --array above
COCO=/data/coco2014           # train2014/, val2014/, annotations/instances_{train,val}2014.json
OUT=/shared/shards/coco       # one folder on a shared file system
FLAGS=(--coco-root "$COCO" --split train2014 --out "$OUT" --slic-segments 200 300 --coco-protocol recam)

if [ "${JOIN:-0}" = 1 ]; then
  exec cpn pack "${FLAGS[@]}" --join
fi
exec cpn pack "${FLAGS[@]}" --part "$SLURM_ARRAY_TASK_ID/$PARTS" --workers "$SLURM_CPUS_PER_TASK" --resume
