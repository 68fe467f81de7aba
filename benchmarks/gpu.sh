#!/usr/bin/env bash
# All of hub-reflow's GPU measurements in one run, sized for a GPU lent for a few minutes (--budget
# seconds in all): JSON under benchmarks/results/gpu/latest/ (or --out; rename the folder after the
# machine and date, e.g. gpu/h200_<date>/, and cite its files in docs/results.md), the tables printed
# at the end.
#
#   bash benchmarks/gpu.sh                 # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --smoke         # dry run on any machine (CPU): tiny sizes, a few minutes
#
# In order (most important first; each writes its JSON as it goes, a failed or timed-out step does
# not stop the others; exit status 1 if any failed):
#   1. train_cost.py --real-size --batch-size 8,64 --profile --capture-effect: one training step of
#      LeRobot's normal fine-tune vs reflow with online pairs (CUDA-graph teacher sampling) vs cached
#      pairs; smolvla_base architecture, random weights; time, CUDA memory, aten ops / syncs /
#      launches per step, top ops, phase times, the per-op host cost ratio against the normal step,
#      the normal step before/after its process captures a sampling graph, the normal and cached
#      steps profiled in one process in alternating rounds (--interleaved); and, at batch 8, the
#      memory row of the cached step with the bf16 stochastic-rounding update (no fp32 masters).
#      At most BUDGET-190 s.                                        -> train_cost_gpu.json
#   2. teacher_sampling.py: LeRobot's eager sample_actions vs the CUDA-graph fast path at batch 8,
#      32 (--teacher-batch's default call) and 64: speed-up, capture time, max difference, the eager
#      call's peak memory. At most 60 s. -> teacher_sampling_gpu.json
#   3. latency.py --fast --compile: chunk latency at batch 1 (1 camera, LeRobot's bf16 layout),
#      eager at 1/2/4/10 steps; hub_reflow.fast_inference (the whole chunk as one CUDA graph) at 1
#      and 2 steps with its capture time and max difference to eager; then LeRobot's compile_model
#      (reduce-overhead) of the 1-step student only, with what is left of --budget.
#                                                                   -> latency_gpu.json
#
# Nothing is downloaded or installed at run time (HF_HUB_OFFLINE=1; the backbone with the
# SmolVLM2-500M shape and random weights is written locally, ~1 GB, under --workdir). The GPU
# image needs, installed beforehand:
#   - Python 3.12 and torch with CUDA (e.g. torch 2.11.0+cu130; its wheel brings triton);
#   - lerobot[smolvla,dataset] 0.6.x and what it pulls in (transformers, accelerate, datasets,
#     huggingface_hub, safetensors, ...), plus `av` and `num2words` (LeRobot imports them);
#   - hub-reflow's other dependencies: matplotlib, jinja2, tqdm, fastapi, uvicorn (pyproject.toml);
#   - gcc (torch.compile's Triton builds its kernel launchers with it; only step 3's compile);
#   - hub-reflow itself: `pip install --no-deps -e .`, or nothing (this script puts the repository
#     on PYTHONPATH).
#
# Options: --smoke, --out DIR (default benchmarks/results/gpu/latest; --smoke: outputs/gpu-smoke),
# --workdir DIR (default outputs/gpu), --budget SECONDS (default 440: the whole run; --smoke: 300),
# --teacher T --dataset D --dataset-root R (train_cost.py on that teacher instead of building one).
# PYTHON (default python) names the interpreter.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
SMOKE=0
OUT=""
WORKDIR=""
BUDGET=""
TEACHER_ARGS=()
usage() { echo "gpu.sh: error: $1" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) [ $# -ge 2 ] || usage "--out needs a folder"; OUT="$2"; shift ;;
    --workdir) [ $# -ge 2 ] || usage "--workdir needs a folder"; WORKDIR="$2"; shift ;;
    --budget) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || usage "--budget needs a number of seconds"; BUDGET="$2"; shift ;;
    --teacher|--dataset|--dataset-root) [ $# -ge 2 ] || usage "$1 needs a value"; TEACHER_ARGS+=("$1" "$2"); shift ;;
    *) usage "unknown option $1 (see the header of benchmarks/gpu.sh)" ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then  # the compile is only tried for a few seconds (Inductor takes minutes on a CPU)
  OUT="${OUT:-$ROOT/outputs/gpu-smoke}"; WORKDIR="${WORKDIR:-$ROOT/outputs/gpu-smoke/work}"; BUDGET="${BUDGET:-300}"
else
  OUT="${OUT:-$ROOT/benchmarks/results/gpu/latest}"; WORKDIR="${WORKDIR:-$ROOT/outputs/gpu}"; BUDGET="${BUDGET:-440}"
fi
mkdir -p "$OUT" "$WORKDIR"
OUT="$(cd "$OUT" && pwd)"; WORKDIR="$(cd "$WORKDIR" && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME="${HF_HOME:-$WORKDIR/hf_home}"

SUFFIX=$([ "$SMOKE" = 1 ] && echo "_smoke" || echo "_gpu")
FAILED=()
START=$SECONDS
step() {  # step NAME SECONDS COMMAND...: run with a time limit (its whole process group), report, keep going
  local name="$1" limit="$2"; shift 2
  [ "$limit" -lt 5 ] && limit=5
  [ "$SMOKE" = 1 ] && limit=3600  # --smoke: only the compile is held to the budget (CPU speeds vary)
  echo "== $name ($(( SECONDS - START )) s into the run, at most $limit s): $*" >&2
  local limiter=(timeout --kill-after=5 "$limit")
  command -v timeout >/dev/null || limiter=()  # no coreutils timeout: the step runs unlimited
  if "${limiter[@]}" "$@"; then echo "== $name done in its $(( SECONDS - t0 )) s" >&2
  else local rc=$?; FAILED+=("$name"); echo "== $name FAILED (exit $rc$([ $rc = 124 ] && echo ": over its $limit s"))" >&2; fi
}
left() { echo $(( BUDGET - (SECONDS - START) - $1 )); }  # left RESERVE: seconds of the budget left, less RESERVE

{ command -v nvidia-smi >/dev/null && nvidia-smi || echo "no nvidia-smi"; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; } \
  > "$OUT/gpu_info$SUFFIX.txt" 2>&1
cat "$OUT/gpu_info$SUFFIX.txt" >&2

if [ "$SMOKE" = 1 ]; then
  TC=(--smoke --profile --profile-steps 1 --capture-effect --interleaved 2
      --variants "normal,reflow_online,reflow_cached,reflow_cached_sr")
  TS=(--smoke --batch-sizes 4,2 --repeats 2)
  LAT=(--smoke --cameras 1 --layouts lerobot --repeats 1 --fast --fast-steps 1,2 --compile-steps 1)
else
  TC=(--real-size --batch-size 8,64 --profile --profile-steps 2 --capture-effect --interleaved 3
      --variants "normal,reflow_online,reflow_cached,reflow_cached_sr")
  TS=(--batch-sizes 8,32,64 --repeats 10)  # 32: --teacher-batch's default call
  LAT=(--cameras 1 --layouts lerobot --repeats 10 --warmup 2 --fast --fast-steps 1,2 --compile-steps 1)
fi

# Reserves: what the later steps need at least (the teacher sampling, latency's eager and fast rows, the
# student's compile; sized from the H200 runs in docs/results.md#gpu-runs).
t0=$SECONDS; step train_cost "$(left 190)" "$PY" benchmarks/train_cost.py "${TC[@]}" "${TEACHER_ARGS[@]}" \
  --workdir "$WORKDIR" --json "$OUT/train_cost$SUFFIX.json"
LIMIT=$(left 130); [ "$LIMIT" -gt 60 ] && LIMIT=60
t0=$SECONDS; step teacher_sampling "$LIMIT" "$PY" benchmarks/teacher_sampling.py "${TS[@]}" --workdir "$WORKDIR" \
  --out "$OUT/teacher_sampling$SUFFIX.json"
# The compile gets what is left of the budget, less ~60 s for the eager and fast rows and the tables.
t0=$SECONDS; step latency "$(left 0)" "$PY" benchmarks/latency.py "${LAT[@]}" --workdir "$WORKDIR" --no-png \
  --compile --compile-budget "$(left 60)" --out "$OUT/latency$SUFFIX.json"

echo
echo "# hub-reflow GPU measurements ($(( SECONDS - START )) s; JSON in $OUT)"
"$PY" - "$OUT" "$SUFFIX" <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
out, suffix = Path(sys.argv[1]), sys.argv[2]
info = (out / f"gpu_info{suffix}.txt").read_text().strip().splitlines()
print(next((ln for ln in info if ln.startswith("torch ")), ""))
tc = out / f"train_cost{suffix}.json"
if tc.exists():
    import train_cost

    d = json.loads(tc.read_text())
    hw = d["hardware"]
    print(f"\n## Training step ({d['size']}; {hw.get('gpu') or hw['cpu']}, torch {d['torch']})\n")
    for t in d["targets"].values():
        print(f"- {t['target']}: {'met' if t['met'] else 'NOT met'} ({t['detail']})")
    for e in d.get("errors", []):
        print(f"- FAILED: {e['name']} batch {e['batch_size']}: {e['error']}")
    print()
    print(train_cost.ops_markdown(d["rows"]))
    print()
    print(train_cost.markdown(d["rows"]))
    if d.get("profile"):
        print()
        print(train_cost.profile_markdown(d["rows"]))
        print()
        print(train_cost.host_cost_markdown(d["rows"]))
for name, title in (("teacher_sampling", "Teacher sampling: eager vs fast path"), ("latency", "Chunk latency, batch 1")):
    f = out / f"{name}{suffix}.json"
    if f.exists():
        d = json.loads(f.read_text())
        hw = d["hardware"]
        print(f"\n## {title} ({hw.get('gpu') or hw['cpu']}, torch {hw['torch']})\n")
        print(d["table"])
        if d.get("fast_table"):
            print("\nhub_reflow.fast_inference (the whole chunk as one CUDA graph on CUDA; eager on the CPU):\n")
            print(d["fast_table"])
        if d.get("compiled_table"):
            print(f"\nLeRobot's compiled path (compile_model, mode {d['settings']['compile_mode']}):\n")
            print(d["compiled_table"])
EOF
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu.sh: failed steps: ${FAILED[*]} (the others' JSON is in $OUT)" >&2
  exit 1
fi
