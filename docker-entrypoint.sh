#!/bin/sh
# Start the image's command as the unprivileged service user.
#
# The container starts as root only for this: volumes written by an earlier image, which ran
# everything as root, hold root's files, so the writable directories are handed to the service
# user (only what is not its already), then the command runs as that user with setpriv
# (util-linux, in the base image). Started as any other user, it runs the command as it is.
set -eu

RUN_AS="${RLV3_RUN_AS:-rlv3}"
WRITABLE="${RLV3_WRITABLE_DIRS:-/app/data /run/rlv3-metrics}"

if [ "$(id -u)" = "0" ]; then
  for dir in $WRITABLE; do
    mkdir -p "$dir"
    find "$dir" \( ! -user "$RUN_AS" -o ! -group "$(id -gn "$RUN_AS")" \) -exec chown -h "$RUN_AS:$(id -gn "$RUN_AS")" {} +
  done
  exec setpriv --reuid="$RUN_AS" --regid="$(id -gn "$RUN_AS")" --init-groups --inh-caps=-all -- "$@"
fi
exec "$@"
