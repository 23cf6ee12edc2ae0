#!/usr/bin/env bash
# Copy the evidence of run and grid folders into DEST: configs, metrics logs, result JSON and grid manifests, no
# checkpoints, attacker weights, reconstructions, locks or the results database (a run folder shrinks from ~20 MB
# to ~10 KB). Reports rebuild from the copy, e.g.
#   bash scripts/archive-runs.sh evidence runs
#   splitshield report evidence/quick-fmnist-frontier-noise --markdown docs/results-frontier.md
# Why: run folders live in the ignored runs/ of one work tree; a session's tree is laid anew, so a grid measured
# across sessions keeps its figures only in the repository. More attacks on an archived run need its checkpoint,
# i.e. training it again.
set -euo pipefail
dest=${1:?usage: scripts/archive-runs.sh DEST [RUNS_DIR]}
src=${2:-runs}
[ -d "$src" ] || { echo "archive-runs: no folder $src" >&2; exit 2; }
mkdir -p "$dest"
(cd "$src" && find . -type f \( -name config.yaml -o -name metrics.jsonl -o -name '*.json' \) \
    ! -name '*.tmp' -print0) | tar -C "$src" --null -T - -cf - | tar -C "$dest" -xf -
echo "archive-runs: $(find "$dest" -type f | wc -l) files, $(du -sh "$dest" | cut -f1) in $dest"
