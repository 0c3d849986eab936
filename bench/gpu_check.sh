#!/usr/bin/env bash
# GPU checks in one script (about 8 minutes on one data-centre GPU), run from the repository root:
#
#   bench/gpu_check.sh [PYTHON]        PYTHON defaults to .venv/bin/python (make setup)
#
# 1. training throughput at the paper's sizes (96³ patches, batch 2, bf16 autocast, torch.compile on):
#    our whole step with the real data pipeline against the compiled stock MONAI step, for the SwinUNETR
#    student and the residual U-Net teacher, with each side's peak GPU memory (target: ratio ≥ 0.9);
# 2. a 2-round federated smoke run of the paper profile (1 mm, 96³, feature size 24) on tiny synthetic
#    sites, through the real loopback federation (TLS, node keys, proxy).
#
# Without a GPU it says so, skips both GPU parts, and runs the CPU smoke test of step 1 instead, so the
# script itself is checked everywhere. Every figure is printed as JSON; the script stops at the first error.
set -euo pipefail

PY=${1:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
say() { printf '== %s\n' "$*"; }

if [ ! -x "$PY" ]; then
  echo "no Python at $PY: run \`make setup\` first, or pass the Python to use" >&2
  exit 2
fi

gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')
if [ -z "$gpu" ]; then
  say "no GPU visible to torch: skipping the GPU throughput and the paper-profile federated run"
  say "CPU smoke test of the throughput benchmark (small patch, few steps)"
  "$PY" bench/train_throughput.py --model teacher --device cpu --steps 4 --patch 32
  say "done (CPU only; run this script on a machine with a GPU for the GPU figures)"
  exit 0
fi

say "GPU: $gpu"
say "1a. student step (SwinUNETR feature size 24 as in the paper, 96³, batch 2, bf16, compiled) vs stock"
timeout 150 "$PY" bench/train_throughput.py --model student --compile --steps 40
say "1b. teacher step (residual U-Net 32…320, 96³, batch 2, bf16, compiled) vs stock"
timeout 120 "$PY" bench/train_throughput.py --model teacher --compile --steps 40

say "2. paper profile, 2 rounds × 2 local steps, 3 sites × 2 cases, on the loopback federation"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  say "nginx is missing (the coordinator's proxy; make deps installs it): federated smoke run skipped"
  exit 0
fi
start=$(date +%s)
timeout 300 "$PY" -m cardiofm demo --profile paper --rounds 2 --local-steps 2 --sites 3 --cases 2 \
  --out "$OUT/paper-smoke" >"$OUT/paper-smoke.log" 2>&1 || { tail -40 "$OUT/paper-smoke.log"; exit 1; }
"$PY" - "$OUT/paper-smoke/results.json" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
runs = data["federation"]["runs"]
print(json.dumps({
    "paper_smoke_seconds": int(sys.argv[2]),
    "stages": {r["stage"]: {"status": r["status"], "seconds": r["seconds"]} for r in runs},
    "settings": data["federation"]["settings"],
    "expected_gpu_hours_per_site": data["federation"].get("expected_gpu_hours_per_site"),
}, indent=2))
assert all(r["status"] == "finished:completed" for r in runs), "a stage did not complete"
EOF
say "done; logs in $OUT"
