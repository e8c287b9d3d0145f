#!/usr/bin/env bash
# A private RabbitMQ node for the RabbitMQ fault tests, on loopback port 5673, so that
# restarting it never disturbs the shared broker on 5672 (node rabbit@...).
#
#   .ci/rabbitmq-faults.sh start     start the node if it is not running, wait until it boots
#   .ci/rabbitmq-faults.sh restart   stop_app + start_app on that node (start it if down)
#   .ci/rabbitmq-faults.sh stop      stop the node (no-op when it is not running)
#   .ci/rabbitmq-faults.sh status    exit 0 if the node is up, 3 if not
#
# Idempotent, every wait bounded. Plugins disabled; state (mnesia, logs) under
# POLYBUS_RMQ_FAULTS_DIR. The Debian wrappers run the node and rabbitmqctl as the rabbitmq
# user, so the node shares that user's Erlang cookie (read, never written, here).
#
# Environment (all optional):
#   POLYBUS_RMQ_FAULTS_PORT  AMQP port           (default 5673; distribution port +20000)
#   POLYBUS_RMQ_FAULTS_DIR   state directory     (default /tmp/polybus-rabbitmq-faults)
#   POLYBUS_RMQ_FAULTS_WAIT  boot timeout, s     (default 60)
set -euo pipefail

PORT=${POLYBUS_RMQ_FAULTS_PORT:-5673}
BASE=${POLYBUS_RMQ_FAULTS_DIR:-/tmp/polybus-rabbitmq-faults}
WAIT_SECS=${POLYBUS_RMQ_FAULTS_WAIT:-60}
NODE="polybus-faults-${PORT}@localhost"

mkdir -p "$BASE/mnesia" "$BASE/log"
echo "[]." > "$BASE/enabled_plugins"
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
  chown -R rabbitmq:rabbitmq "$BASE"
fi
export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$PORT"
export RABBITMQ_DIST_PORT=$((PORT + 20000))
export RABBITMQ_MNESIA_BASE="$BASE/mnesia"
export RABBITMQ_LOG_BASE="$BASE/log"
export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"
export RABBITMQ_PID_FILE="$BASE/node.pid"
export RABBITMQ_CONFIG_FILE="$BASE/rabbitmq"  # none: the defaults (guest on loopback)
export ERL_EPMD_ADDRESS=127.0.0.1

ctl() { timeout "$WAIT_SECS" rabbitmqctl -q -n "$NODE" "$@"; }

running() { timeout 15 rabbitmqctl -q -n "$NODE" ping >/dev/null 2>&1; }

await_boot() {
  if ! ctl await_startup >/dev/null; then
    echo "rabbitmq-faults: node $NODE did not boot in ${WAIT_SECS}s (logs: $BASE/log)" >&2
    exit 1
  fi
}

start() {
  if running; then
    ctl start_app >/dev/null  # no-op when the app runs
    await_boot
    return
  fi
  rabbitmq-server -detached
  local deadline=$((SECONDS + WAIT_SECS))
  until running; do
    if ((SECONDS > deadline)); then
      echo "rabbitmq-faults: node $NODE not answering after ${WAIT_SECS}s" >&2
      exit 1
    fi
    sleep 1
  done
  await_boot
}

case "${1:-}" in
  start) start ;;
  restart)
    if running; then
      ctl stop_app >/dev/null
      ctl start_app >/dev/null
      await_boot
    else
      start
    fi
    ;;
  stop)
    if running; then ctl stop >/dev/null; fi
    ;;
  status) running || exit 3 ;;
  *)
    echo "usage: $0 start|restart|stop|status" >&2
    exit 2
    ;;
esac
