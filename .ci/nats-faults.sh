#!/usr/bin/env bash
# A PRIVATE nats-server with JetStream for the NATS fault tests (never the shared one on
# 4222): start | restart | stop, idempotent, bounded waits, loopback only.
#   NATS_FAULTS_PORT (default 14222), NATS_FAULTS_DIR (default /tmp/polybus-nats-faults),
#   NATS_FAULTS_DOWN: seconds the broker stays down during a restart (default 0)
set -euo pipefail
port=${NATS_FAULTS_PORT:-14222}
dir=${NATS_FAULTS_DIR:-/tmp/polybus-nats-faults}
pidfile="$dir/nats-server.pid"
binary=${NATS_SERVER_BIN:-/usr/sbin/nats-server}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
    mkdir -p "$dir/store"
    start-stop-daemon --start --quiet --oknodo --background --make-pidfile --pidfile "$pidfile" \
        --exec "$binary" -- -a 127.0.0.1 -p "$port" -js -sd "$dir/store" -l "$dir/nats-server.log"
    for _ in $(seq 100); do  # 10 s at most
        answers && return 0
        sleep 0.1
    done
    echo "private nats-server did not open 127.0.0.1:$port within 10s" >&2
    tail -n 20 "$dir/nats-server.log" >&2 || true
    return 1
}

stop() {
    [ -f "$pidfile" ] || return 0
    start-stop-daemon --stop --quiet --oknodo --pidfile "$pidfile" --exec "$binary" \
        --retry TERM/10/KILL/5 --remove-pidfile
    for _ in $(seq 50); do  # the port is free again within 5 s
        answers || return 0
        sleep 0.1
    done
    echo "private nats-server still answers on 127.0.0.1:$port" >&2
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop && sleep "${NATS_FAULTS_DOWN:-0}" && start ;;
    *) echo "usage: $0 start|restart|stop" >&2; exit 2 ;;
esac
