#!/usr/bin/env bash
# A PRIVATE Mosquitto for the MQTT fault tests (tests/integration/test_faults_mqtt.py):
# 127.0.0.1 only, port MQTT_FAULTS_PORT (11883), persistence on, so a restart keeps the
# persistent sessions and the QoS 1/2 messages queued for them. Never the shared 1883.
#   start    start it unless it already answers (idempotent)
#   restart  stop it (saving its persistence file) and start it again
#   stop     stop it (idempotent)
# Waits are bounded; exits non-zero with the log's tail when the broker will not come up.
set -euo pipefail

PORT=${MQTT_FAULTS_PORT:-11883}
DIR=${MQTT_FAULTS_DIR:-/tmp/polybus-mosquitto-$PORT}
CONF=$DIR/mosquitto.conf
PIDFILE=$DIR/mosquitto.pid
LOG=$DIR/mosquitto.log
BIN=${MOSQUITTO_BIN:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; }

write_conf() {
    mkdir -p "$DIR"
    cat >"$CONF" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
user $(id -un)
persistence true
persistence_location $DIR/
autosave_interval 1
max_queued_messages 100000
log_dest file $LOG
pid_file $PIDFILE
CONF
}

running_pid() {
    local pid
    [[ -r $PIDFILE ]] || return 1
    pid=$(cat "$PIDFILE")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    if running_pid >/dev/null && port_open; then
        echo "mosquitto 127.0.0.1:$PORT already running"
        return 0
    fi
    write_conf
    "$BIN" -c "$CONF" -d
    local deadline=$((SECONDS + 10))
    until port_open; do
        if ((SECONDS >= deadline)); then
            echo "mqtt-faults.sh: mosquitto did not answer on $PORT" >&2
            tail -n 20 "$LOG" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "mosquitto 127.0.0.1:$PORT up"
}

stop() {
    local pid deadline
    pid=$(running_pid) || { rm -f "$PIDFILE"; return 0; }
    kill -TERM "$pid"  # mosquitto saves its persistence file on SIGTERM
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.05
    done
    rm -f "$PIDFILE"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|restart|stop" >&2; exit 2 ;;
esac
