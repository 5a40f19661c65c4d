#!/usr/bin/env bash
# One prepared run on a GPU machine (at most ~8 minutes): the 1.3B LLM of models/llm.l3m trained in
# bf16 on one GPU (tokens/s, MFU, peak memory; regional compile, float8, eager), then the peers table on the GPU.
# Writes into $OUT (default benchmarks/results): gpu_llm.json, peers_gpu.json (sections 15 and 16 of
# RESULTS.md, `python benchmarks/report.py`), their logs and nvidia-smi.txt.
#
#   bash benchmarks/gpu.sh               # on the GPU machine, from the repository root
#   QUICK=1 bash benchmarks/gpu.sh       # a smoke run of the same script on a CPU (tiny sizes)
#   PARTS=llm VARIANTS=blocks STEPS=10 bash benchmarks/gpu.sh     # one part, fewer variants and steps
#
# The machine's own python3 (with torch) runs it; packages it lacks travel as wheels in .whl/ and are
# installed into /tmp/site: lark (l3m's parser; required), torchao (the float8 variant), open_clip_torch,
# ftfy and wcwidth (the CLIP peer), torchtitan, tyro, docstring-parser, typeguard, spmd-types and torchdata
# (the torchtitan peer); a peer whose package is missing is skipped with a one-line reason. Each part has
# its own time limit, so a part that hangs or fails still leaves the others' results.
set -u
PARTS=${PARTS:-llm,peers}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}

{ nvidia-smi || echo "no nvidia-smi"; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } \
  >"$OUT/nvidia-smi.txt" 2>&1

if [ -n "${QUICK:-}" ]; then
  part llm && timeout 300 $PY benchmarks/gpu_llm.py --quick --out "$OUT" --variants eager 2>&1 | tee "$OUT/gpu_llm.log"
  part peers && timeout 300 $PY benchmarks/peers.py --quick --out "$OUT" 2>&1 | tee "$OUT/peers.log"
  exit 0
fi
# H200 (SXM): dense bf16 989 TFLOP/s by the datasheet; MFU is also given against the measured peak.
part llm && timeout "${LLM_LIMIT:-300}" $PY benchmarks/gpu_llm.py --out "$OUT" --datasheet 989e12 \
  --variants "${VARIANTS:-blocks,float8,eager}" --steps "${STEPS:-20}" 2>&1 | tee "$OUT/gpu_llm.log"
if part peers; then
  # medium sizes, bf16, eager on both sides and l3m's default compile against the peer's eager step
  # shellcheck disable=SC2086
  timeout "${PEERS_LIMIT:-240}" $PY benchmarks/peers.py --device cuda ${PEERS_ARGS:---sizes medium --modes eager --dtypes bf16} \
    --out "$OUT" 2>&1 | tee "$OUT/peers_gpu.log"
  [ -f "$OUT/peers.json" ] && mv "$OUT/peers.json" "$OUT/peers_gpu.json"
fi
