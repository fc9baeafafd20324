#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One entry for a GPU run, in named stages (docs/DEVELOPING.md says how a GPU session is planned):
#
#   bash scripts/gpu.sh start STAGE...   copy the tree to /tmp/lynx-repo, install lynx-ops there
#                                        (offline, no deps), run the stages in order in the
#                                        background (setsid: they outlive this call)
#   bash scripts/gpu.sh wait SECONDS     wait for the stages, printing progress; then, where $OUT
#                                        is set, results.tgz as collect writes it, so that a machine
#                                        lost before the last call still returned what it had; on a
#                                        machine where start never ran, exit 3 at once (COLD)
#   bash scripts/gpu.sh collect          the stages' tables, and results.tgz into $OUT
#
# Stages (each logs to $RES/<stage>.log, results under $RES/<stage>/):
#   offline:SHAPE   lynx-bench offline, stock / Lynx / stock + ceilings, calibrated router
#   offline:SHAPE@FILE  only a Lynx engine with perf/policies/FILE.json: stock and ceilings are
#                   reused from an earlier offline:SHAPE stage of the same chain (--reuse)
#   online:SHAPE    lynx-bench online (vllm bench serve), stock / Lynx / stock, calibrated router
#   online:SHAPE@FILE  only a Lynx server with perf/policies/FILE.json: the stock servers and their
#                   declared SLOs are reused from an earlier online:SHAPE stage of the chain
#   online:SHAPE@FILE+CTRL  the same, the Lynx server with the TPOT controller's settings from
#                   perf/policies/CTRL.json (docs/CONTROLLER.md)
#   soak:SHAPE      lynx-bench soak: flag off (LYNX_SOAK_OFF_MINUTES, default the same), then on
#                   (LYNX_SOAK_MINUTES, default 10; LYNX_SOAK_ON_FIRST=1 runs on first) of
#                   mixed traffic, vllm bench serve, cut streams and malformed requests
#   kernel          perf/bench_kernel.py (the op alone, graph replay), per LYNX_KERNEL_POLICIES
#                   (default bins; also budget, keep_k0), each cut at LYNX_KERNEL_TIMEOUT s (300)
#   kernel-sweep    perf/bench_kernel.py --sweep: every launch shape and selection variant
#                   (LYNX_SWEEP_SHAPES: name prefixes; LYNX_SWEEP_BATCHES, default 1 8 32 64 256;
#                   LYNX_SWEEP_BASELINE: another revision's kernels/remap.py, timed beside, e.g.
#                   .cache/remap_REV.py from `git show REV:lynx_ops/kernels/remap.py`, carried)
#   cuda-tests      pytest -m cuda (the op's CUDA tier; LYNX_CUDA_TESTS picks files, default tests;
#                   LYNX_CUDA_WORKERS pytest-xdist workers, default 8)
#   vllm-gpu-tests  pytest tests/vllm_gpu -m vllm_gpu (the plugin in real vLLM on the GPU; the
#                   two-GPU tests skip on one GPU)
#   main-job        python -m lynx_ops.demo (the README's main job, on the GPU)
#   train-proxy     scripts/train_embedded_model.py --arch qwen3-proxy on .cache/proxy_corpus.jsonl.xz
#                   (LYNX_TRAIN_MINUTES, default 11), then its router profile; the checkpoint is
#                   under $RES/train-proxy/model (`bash scripts/gpu.sh model train-proxy` copies it
#                   into $OUT: results.tgz leaves weights out)
# A stage written STAGE& runs in the background beside the next ones; `join` waits for it (run
# a correctness stage beside a training one, never a timed one).
# Knobs: LYNX_GPU_TESTS (the vllm-gpu-tests paths, default tests/vllm_gpu), LYNX_LAYERS_<shape> (depth), LYNX_ROUTER (preset, default calibrated), LYNX_OFFLINE_EXTRA
# (more `lynx-bench offline` arguments, split on spaces with no quoting, so JSON values without
# spaces; e.g. FP8 experts: --engine-arg quantization=online
#   --engine-arg quantization_config={"moe":"fp8_per_channel"}; n-gram speculation:
#   --engine-arg speculative_config={"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":4,"prompt_lookup_min":2};
#   LoRA: --lora-adapters 4 --lora-rank 16; tensor parallel: --engine-arg tensor_parallel_size=2;
#   a policy: --policy-file perf/policies/FILE), LYNX_ONLINE_EXTRA (the same for `lynx-bench online`).
# vLLM comes from the devkit (../shared/devkit): `source .devkit/env.sh` first.
set -uo pipefail
cmd="${1:?start STAGE... | wait SECONDS | collect}"
shift
REPO=/tmp/lynx-repo RES="${LYNX_GPU_RES:-/tmp/lynx-res}"
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_CACHE_ROOT=/tmp/vllm-cache
# Never NVLink multicast, also in processes that set their own environment (shared GPUs).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$RES"

layers_of() {  # full depth where the bf16 weights fit one H200 (141 GB) with KV room
  case "$1" in
    qwen3-moe) echo "${LYNX_LAYERS_qwen3_moe:-48}" ;;
    deepseek-v2-lite) echo "${LYNX_LAYERS_deepseek_v2_lite:-27}" ;;
    qwen2-moe) echo "${LYNX_LAYERS_qwen2_moe:-24}" ;;
    mixtral) echo "${LYNX_LAYERS_mixtral:-24}" ;;   # 32 layers are 94 GB: 24 leave KV room
    *) echo "" ;;
  esac
}
ceilings_of() {  # expert counts K that bracket what Lynx reaches at B = 8..64
  case "$1" in
    qwen3-moe) echo "32 96" ;; deepseek-v2-lite) echo "16 48" ;; qwen2-moe) echo "12 40" ;;
    mixtral) echo "4 8" ;; *) echo "" ;;
  esac
}

stage() {
  local name="$1" kind="${1%%:*}" shape="${1#*:}" dir="$RES/${1/:/_}" policy="" extra="" ctrl=""
  case "$shape" in *@*) policy="${shape#*@}" shape="${shape%@*}" ;; esac
  case "$policy" in *+*) ctrl="${policy#*+}" policy="${policy%+*}" ;; esac
  if [ -n "$ctrl" ] && [ "$kind" != online ]; then
    echo "$(date +%T) $name refused: a controller file (+CTRL) needs an online stage" >> "$RES/stages"
    return 2
  fi
  local layers; layers="$(layers_of "$shape")"
  if [ -n "$policy" ]; then  # KIND:SHAPE@FILE: perf/policies/FILE.json, the stock side reused
    local earlier="results.json"; [ "$kind" = online ] && earlier="online.json"
    extra="--policy-file perf/policies/$policy.json --reuse $RES/${kind}_$shape/$earlier"
  fi
  [ -n "$ctrl" ] && extra="$extra --controller-file perf/policies/$ctrl.json"
  echo "$(date +%T) $name start" >> "$RES/stages"
  case "$kind" in
    offline)
      python3 -m lynx_ops.bench.cli offline --shape "$shape" ${layers:+--layers $layers} \
        --router "${LYNX_ROUTER:-calibrated}" --batches 1 8 16 32 64 --input-len 128 \
        --output-len 64 --repeats 3 --ceiling $(ceilings_of "$shape") \
        --engine-arg gpu_memory_utilization=0.85 \
        --engine-arg 'compilation_config={"cudagraph_capture_sizes":[1,8,16,32,64]}' \
        ${LYNX_OFFLINE_EXTRA:-} $extra --out "$dir" ;;
    online)
      python3 -m lynx_ops.bench.cli online --shape "$shape" ${layers:+--layers $layers} \
        --router "${LYNX_ROUTER:-calibrated}" --input-len 512 --output-len 256 \
        --concurrency ${LYNX_ONLINE_C:-1 8 16 32 64 128} --repeats 3 --repeat-at ${LYNX_REPEAT_AT:-16 32 64} \
        --prompts-per-concurrency 2 --min-prompts 4 --slo-multipliers 2 3 4 \
        --serve-arg=--gpu-memory-utilization=0.85 --serve-arg=--max-num-seqs=128 \
        '--serve-arg=--compilation-config={"cudagraph_capture_sizes":[1,2,4,8,16,24,32,40,48,56,64,80,96,112,128]}' \
        ${LYNX_ONLINE_EXTRA:-} $extra --out "$dir" ;;
    soak)
      python3 -m lynx_ops.bench.cli soak --shape "$shape" ${layers:+--layers $layers} \
        --router "${LYNX_ROUTER:-calibrated}" --minutes "${LYNX_SOAK_MINUTES:-10}" \
        ${LYNX_SOAK_OFF_MINUTES:+--off-minutes $LYNX_SOAK_OFF_MINUTES} ${LYNX_SOAK_ON_FIRST:+--on-first} \
        --concurrency 16 --max-input 1024 --max-output 256 \
        --serve-arg=--gpu-memory-utilization=0.85 --serve-arg=--max-num-seqs=128 --out "$dir" ;;
    kernel) mkdir -p "$dir" && for pol in ${LYNX_KERNEL_POLICIES:-bins}; do
        timeout "${LYNX_KERNEL_TIMEOUT:-300}" python3 perf/bench_kernel.py --policy "$pol" \
          --out "$dir/kernel_latency_$pol.csv"; done ;;  # bounded: an untimed kernel can be slow
    kernel-sweep) mkdir -p "$dir" && python3 perf/bench_kernel.py --sweep \
        ${LYNX_SWEEP_SHAPES:+--shapes $LYNX_SWEEP_SHAPES} --batches ${LYNX_SWEEP_BATCHES:-1 8 32 64 256} \
        ${LYNX_SWEEP_BASELINE:+--baseline-kernels $LYNX_SWEEP_BASELINE} --out "$dir/kernel_sweep.csv" ;;
    cuda-tests) mkdir -p "$dir" && python3 -m pytest ${LYNX_CUDA_TESTS:-tests} -m cuda -v --tb=short -rfE \
        -p no:cacheprovider -n "${LYNX_CUDA_WORKERS:-8}" ;;  # -v: a cut run still names its failures;
        # -n: pytest-xdist workers, since the tier's time is mostly Triton compiling on the CPU
    vllm-gpu-tests) mkdir -p "$dir" && LYNX_RESULTS_DIR="$dir" python3 -m pytest ${LYNX_GPU_TESTS:-tests/vllm_gpu} \
        -m vllm_gpu -q -p no:cacheprovider -o addopts="" -rfEs ;;
    main-job) mkdir -p "$dir" && python3 -m lynx_ops.demo ;;
    train-proxy) mkdir -p "$dir" && python3 scripts/train_embedded_model.py --arch qwen3-proxy \
        --corpus proxy --corpus-archive .cache/proxy_corpus.jsonl.xz \
        --minutes "${LYNX_TRAIN_MINUTES:-11}" --out "$dir/model" &&
      python3 scripts/export_router_stats.py --model "$dir/model" \
        --corpus-archive .cache/proxy_corpus.jsonl.xz --out "$dir/router_profile.json" ;;
    *) echo "unknown stage $name" ;;
  esac > "$RES/${1/:/_}.log" 2>&1
  echo "$(date +%T) $name exit $?" >> "$RES/stages"
}

case "$cmd" in
start)
  rm -rf "$REPO" && mkdir -p "$REPO" && cp -a . "$REPO/" && rm -rf "$REPO/.devkit"
  cd "$REPO" || exit 1
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$RES/gpu.txt"
  export PYTHONPATH="/tmp/lynx-site:$REPO" LYNX_GIT_SHA="${LYNX_GIT_SHA:-}"
  export -f stage layers_of ceilings_of
  export RES
  setsid nohup bash -c 'for s in "$@"; do case "$s" in
      join) wait ;; *"&") stage "${s%&}" & ;; *) stage "$s" ;; esac; done
    wait; echo "$(date +%T) all done" >> "$RES/stages"' \
    _ "$@" > "$RES/chain.log" 2>&1 < /dev/null &
  echo "started: $*"; cat "$RES/gpu.txt"
  ;;
wait)
  # start writes gpu.txt first. Without it this is a fresh machine (the last one went back after
  # 30 s idle): say so at once, rather than spend the whole wait of device time on nothing.
  if [ ! -f "$RES/gpu.txt" ]; then
    echo "COLD: no chain was started on this machine (the one that ran start was given back);"
    echo "send the devkit again and start the stages that had not finished"
    exit 3
  fi
  deadline=$(( $(date +%s) + ${1:-0} ))
  while [ "$(date +%s)" -lt "$deadline" ] && ! grep -q "all done" "$RES/stages" 2>/dev/null; do
    sleep 10
  done
  cat "$RES/stages" 2>/dev/null
  for f in "$RES"/*.log; do echo "== $f"; grep -E "^\[|PROGRESS|TPOT SLO" "$f" | tail -4; done
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/results.tgz" -C "$RES" --exclude='model' --exclude='*.safetensors' \
      --exclude='tokenizer.json' . 2>/dev/null && echo "partial results: $OUT/results.tgz"
  fi
  ;;
model)  # a trained checkpoint's files into $OUT, one file each (weights stay out of results.tgz)
  OUT="${OUT:?}"; cp -v "$RES/${1:?stage}/model/"* "$OUT/" && ls -la "$OUT"
  ;;
collect)
  OUT="${OUT:?}"
  cat "$RES/stages" 2>/dev/null
  for f in "$RES"/*.log; do
    echo "== $f"; sed -n '/^router:/,$p' "$f" | head -30
  done
  tar czf "$OUT/results.tgz" -C "$RES" --exclude='model' --exclude='*.safetensors' \
    --exclude='tokenizer.json' . 2>/dev/null
  ls -la "$OUT"
  ;;
esac
