#!/usr/bin/env bash
# Restart one of this machine's local brokers (the fault suite's POLYBUS_<NAME>_RESTART,
# exported by .ci/run): redis | nats | rabbitmq | kafka | mqtt. Returns once the restart command
# returned; the suite itself waits until the broker answers again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case ${1:-} in
redis)
    redis-cli -p 6379 shutdown nosave || true
    sleep 0.5
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    ;;
nats)
    start-stop-daemon --stop --oknodo --retry 5 --exec /usr/sbin/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    ;;
rabbitmq)
    rabbitmqctl stop_app
    rabbitmqctl start_app
    ;;
kafka)
    bash "$here/kafka.sh" stop
    bash "$here/kafka.sh" start
    ;;
mqtt)
    start-stop-daemon --stop --oknodo --retry 5 --exec /usr/sbin/mosquitto
    mkdir -p /run/mosquitto
    chown mosquitto: /run/mosquitto 2>/dev/null || true
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
    ;;
*)
    echo "usage: $0 redis|nats|rabbitmq|kafka|mqtt" >&2
    exit 2
    ;;
esac
