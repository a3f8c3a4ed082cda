#!/bin/sh
# Container entry point: `recsys "$@"`. A worker advertises its own address to the other workers
# (Faust routes /recommendations/<user>/ to the partition's owner) and to Prometheus, so with
# `docker compose up --scale worker=N` every replica gets a distinct web host on the same port.
set -eu
if [ -z "${STREAMREC_WEB_HOST:-}" ]; then
    # The first non-loopback address (in a container: its address on the compose network).
    STREAMREC_WEB_HOST="$(hostname -I 2>/dev/null | cut -d' ' -f1)"
    [ -n "$STREAMREC_WEB_HOST" ] || STREAMREC_WEB_HOST="$(hostname)"
    export STREAMREC_WEB_HOST
fi
exec recsys "$@"
