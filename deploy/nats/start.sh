#!/bin/sh
# Start nats-server with the passwords users.conf refers to ($EDGELOOP_NATS_EDGE_PASSWORD, ...) taken
# from secret files: every file in the secrets folder becomes the environment variable of its name.
# nats-server parses a variable's value as config, so a password starting with a digit would fail
# ("1e5..." is read as a number) or change: each value is handed over quoted, as a string.
# Used by the compose `scale` profile and the Kubernetes `nats` component (a copy there).
#   NATS_SECRETS_DIR  folder of secret files (default /run/secrets/nats)
#   NATS_CONFIG       the server config (default /etc/nats/nats-server.conf; users.conf beside it)
set -eu
secrets=${NATS_SECRETS_DIR:-/run/secrets/nats}
for file in "$secrets"/*; do
    [ -f "$file" ] || continue
    name=${file##*/}
    value=
    IFS= read -r value <"$file" || [ -n "$value" ] || { echo "start.sh: $file is empty" >&2; exit 1; }
    case $value in
        *\"* | *\\*) echo "start.sh: $file holds a quote or backslash; use letters and digits" >&2; exit 1 ;;
    esac
    export "$name=\"$value\""
done
exec nats-server -c "${NATS_CONFIG:-/etc/nats/nats-server.conf}"
