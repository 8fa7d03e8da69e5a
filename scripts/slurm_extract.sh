#!/bin/bash
# Frames + TV-L1 flow of the full HMDB51 as a Slurm job array: 64 jobs x 8 cores (512 cores).
# Each job takes every 64th video (utils.extract --shard K/N) into the same output folder, which
# every node must see (data/hmdb51/rawframes on a shared file system); finished videos are
# skipped, so a job that is killed or requeued resumes. After the array, one run without
# --shard retries what failed and writes the common extraction_failures.csv:
#
#   jobid=$(sbatch --parsable scripts/slurm_extract.sh)
#   sbatch --dependency=afterany:$jobid --cpus-per-task=8 --wrap "python -m utils.extract --dataset hmdb51 --workers 8"
#
#SBATCH --job-name=hmdb51-tvl1
#SBATCH --array=1-64
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=03:00:00
#SBATCH --output=extract-%A_%a.log
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
python -m utils.extract --dataset hmdb51 --method tvl1 --no-progress \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" \
    --workers "${SLURM_CPUS_PER_TASK}" --opencv-threads 1
