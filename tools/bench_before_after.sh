#!/usr/bin/env bash
# Engine frames/s before and after a change, side by side in one run (issue 19, "not slower"):
# the shipped teacher through `worldsim-bench engine` (fp32, model + decode, default sampler),
# alternating OLD and NEW checkouts ROUNDS times so that drift of the machine hits both alike.
#   bash tools/bench_before_after.sh /path/to/old/checkout [rounds] [chunks]
# OLD must be a checkout of this repository (e.g. `git worktree add ../old <commit>`); its bench
# is found at worldsim/cli/bench.py or, before the layered package, envs/bench.py.
set -euo pipefail
OLD=$(cd "$1" && pwd); ROUNDS=${2:-2}; CHUNKS=${3:-10}
NEW=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$NEW/.venv/bin/python}
CK=$NEW/assets/teacher_builtin_v1
run() {  # $1 checkout -> prints default_frames_per_s
    local mod=worldsim.cli.bench; [ -f "$1/worldsim/cli/bench.py" ] || mod=envs.bench
    (cd "$1" && "$PY" -m $mod engine --checkpoint "$CK" --chunks "$CHUNKS" --session-frames 0 --play-seconds 0 \
        --out /tmp/bench_ba.json >/dev/null 2>&1)
    "$PY" -c 'import json; r = json.load(open("/tmp/bench_ba.json"))["engine"]; print(round(r["default_frames_per_s"], 2))'
}
for i in $(seq "$ROUNDS"); do
    o=$(run "$OLD"); n=$(run "$NEW")
    echo "round $i: old $o frames/s, new $n frames/s, new/old $(python3 -c "print(f'{$n / $o:.3f}')")"
done
