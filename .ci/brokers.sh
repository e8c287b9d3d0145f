#!/usr/bin/env bash
# Ensure the local message brokers the integration tests need are up on
# 127.0.0.1: Redis 6379, RabbitMQ 5672, NATS 4222 (JetStream), Mosquitto 1883.
#
# On the CI/dev machines these are normally already started before the session;
# this script only starts the ones that are not listening, then waits (bounded)
# until each answers. Idempotent: running it again is a no-op. Prints one line
# per broker; exits non-zero (with the tail of the broker's log) if any broker
# cannot be brought up.
#
# Kafka (tansu) is handled separately by .ci/kafka.sh.
set -euo pipefail

HOST=127.0.0.1

log() { printf '%s\n' "$*"; }
die() { printf 'brokers.sh: %s\n' "$*" >&2; exit 1; }

# port_open PORT -> 0 if something accepts TCP connections on HOST:PORT.
port_open() {
    # Subshell so the fd is closed again; timeout guards against a hung connect.
    timeout 2 bash -c "exec 3<>/dev/tcp/${HOST}/$1" 2>/dev/null
}

# wait_port PORT SECONDS -> 0 once the port answers, 1 after SECONDS.
wait_port() {
    local port=$1 secs=$2 deadline
    deadline=$((SECONDS + secs))
    until port_open "$port"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

show_log() {
    local f
    for f in "$@"; do
        if [[ -r $f ]]; then
            printf -- '--- last lines of %s ---\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

# ---------------------------------------------------------------- redis ----
# redis_ping PORT -> 0 if the server answers PING with +PONG (not LOADING).
# shellcheck disable=SC2016  # the inner script expands $0/$1 itself
redis_ping() {
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r line <&3
        [[ $line == +PONG* ]]' "$HOST" "$1" 2>/dev/null
}

ensure_redis() {
    local port=6379 t0=$SECONDS
    if port_open "$port"; then
        log "redis     ${HOST}:${port} already up"
        return
    fi
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    if ! wait_port "$port" 20; then
        show_log /var/log/redis/ci.log
        die "redis did not open ${HOST}:${port} within 20s"
    fi
    # PING must answer +PONG (port open is not enough while loading).
    local deadline=$((SECONDS + 20))
    until redis_ping "$port"; do
        if ((SECONDS >= deadline)); then
            show_log /var/log/redis/ci.log
            die "redis on ${HOST}:${port} does not answer PING"
        fi
        sleep 0.2
    done
    log "redis     ${HOST}:${port} started ($((SECONDS - t0))s)"
}

# ------------------------------------------------------------- rabbitmq ----
# Readiness: port open AND `rabbitmqctl await_startup` (falls back to an AMQP
# protocol handshake if rabbitmqctl is unusable, e.g. erlang cookie trouble).
amqp_handshake() {
    # Send the AMQP 0-9-1 protocol header; a ready broker replies with a
    # Connection.Start method frame (frame type 1).
    python3 - "$HOST" "$1" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        s.settimeout(3)
        data = s.recv(7)
    sys.exit(0 if len(data) == 7 and data[0] == 1 else 1)
except OSError:
    sys.exit(1)
PY
}

ensure_rabbitmq() {
    local port=5672 t0=$SECONDS secs=60
    if port_open "$port"; then
        log "rabbitmq  ${HOST}:${port} already up"
        return
    fi
    rabbitmq-server -detached
    local deadline=$((SECONDS + secs))
    if ! wait_port "$port" "$secs"; then
        show_log /var/log/rabbitmq/startup_log /var/log/rabbitmq/startup_err
        die "rabbitmq did not open ${HOST}:${port} within ${secs}s"
    fi
    local left=$((deadline - SECONDS))
    ((left < 5)) && left=5
    if ! timeout "$left" rabbitmqctl await_startup >/dev/null 2>&1; then
        # rabbitmqctl may fail for reasons unrelated to the broker (cookie,
        # node name); accept a successful AMQP handshake instead.
        until amqp_handshake "$port"; do
            if ((SECONDS >= deadline)); then
                show_log /var/log/rabbitmq/startup_log /var/log/rabbitmq/startup_err
                die "rabbitmq on ${HOST}:${port} not ready within ${secs}s"
            fi
            sleep 0.5
        done
    fi
    log "rabbitmq  ${HOST}:${port} started ($((SECONDS - t0))s)"
}

# ----------------------------------------------------------------- nats ----
ensure_nats() {
    local port=4222 t0=$SECONDS
    if port_open "$port"; then
        log "nats      ${HOST}:${port} already up"
        return
    fi
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    if ! wait_port "$port" 20; then
        show_log /var/log/nats-server.log
        # start-stop-daemon --oknodo is a no-op when a nats-server process
        # already exists (even one that is not listening on this port).
        die "nats did not open ${HOST}:${port} within 20s (running: $(pgrep -ax nats-server || echo none))"
    fi
    log "nats      ${HOST}:${port} started ($((SECONDS - t0))s)"
}

# ------------------------------------------------------------ mosquitto ----
ensure_mosquitto() {
    local port=1883 t0=$SECONDS
    if port_open "$port"; then
        log "mosquitto ${HOST}:${port} already up"
        return
    fi
    mkdir -p /run/mosquitto
    chown mosquitto: /run/mosquitto 2>/dev/null || true
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
    if ! wait_port "$port" 20; then
        show_log /var/log/mosquitto/mosquitto.log
        die "mosquitto did not open ${HOST}:${port} within 20s"
    fi
    log "mosquitto ${HOST}:${port} started ($((SECONDS - t0))s)"
}

ensure_redis
ensure_rabbitmq
ensure_nats
ensure_mosquitto
