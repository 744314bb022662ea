#!/usr/bin/env bash
# One command from a fresh clone to a running pool on this machine (as root):
# installs what is missing, builds, starts a schedd and one starter with state
# in ./stj-dev, and submits a job as the unprivileged user `stjdemo`.
#   scripts/demo.sh        set up and run the demo
#   scripts/demo.sh stop   stop the demo daemons
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="$PWD/stj-dev"
# Jobs get a private /tmp: the starter's files must live elsewhere.
case "$PWD" in /tmp | /tmp/*) DEV=/var/tmp/stj-demo ;; esac
export STJ_SCHEDD_SOCKET="$DEV/schedd.sock"

stop() {
  for p in "$DEV"/*.pid; do
    [ -e "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
}

if [ "${1:-}" = stop ]; then
  stop
  echo "demo daemons stopped (state kept in $DEV)"
  exit 0
fi

scripts/install-deps.sh
cargo build --workspace --locked
BIN="$PWD/target/debug"

stop
mkdir -p "$DEV"
chmod 755 "$DEV"
# The directory reverse connections are handed through (root's, 1733).
"$BIN/stj-schedd" init-daemon-sock --dir "$DEV/daemon_sock" >/dev/null
"$BIN/stj-schedd" --state-dir "$DEV/schedd" --socket "$STJ_SCHEDD_SOCKET" --listen 127.0.0.1:9618 \
  --daemon-sock-dir "$DEV/daemon_sock" >"$DEV/schedd.log" 2>&1 &
echo $! >"$DEV/schedd.pid"
for _ in $(seq 100); do [ -S "$STJ_SCHEDD_SOCKET" ] && break; sleep 0.1; done
[ -S "$STJ_SCHEDD_SOCKET" ] || { cat "$DEV/schedd.log"; exit 1; }
"$BIN/stj-schedd" token demo-node --state-dir "$DEV/schedd" --out "$DEV/join-token"

"$BIN/stj-starter" --schedd 127.0.0.1:9618 --token-file "$DEV/join-token" --name demo-node \
  --work-dir "$DEV/node" --session-listen 127.0.0.1:0 >"$DEV/starter.log" 2>&1 &
echo $! >"$DEV/starter.pid"

id stjdemo >/dev/null 2>&1 || useradd --create-home --shell /bin/bash stjdemo
JOB=$(cd /home/stjdemo && su stjdemo -c "STJ_SCHEDD_SOCKET=$STJ_SCHEDD_SOCKET $BIN/stj submit --env DEMO=yes -- sleep 3600")
su stjdemo -c "STJ_SCHEDD_SOCKET=$STJ_SCHEDD_SOCKET $BIN/stj wait $JOB --state running --timeout 30"
"$BIN/stj" q

echo
echo "+ ssh-to-job $JOB 'hostname; ps; pwd'   (as stjdemo)"
(cd /home/stjdemo && su stjdemo -c "STJ_SCHEDD_SOCKET=$STJ_SCHEDD_SOCKET $BIN/ssh-to-job $JOB 'hostname; ps; pwd'")

cat <<EOT

Job $JOB is running as stjdemo. Try:
  export STJ_SCHEDD_SOCKET=$STJ_SCHEDD_SOCKET
  $BIN/stj q
  su stjdemo -c "STJ_SCHEDD_SOCKET=$STJ_SCHEDD_SOCKET $BIN/ssh-to-job $JOB"      # a shell inside the job
  su stjdemo -c "STJ_SCHEDD_SOCKET=$STJ_SCHEDD_SOCKET $BIN/stj rm $JOB"
Logs: $DEV/schedd.log $DEV/starter.log     Stop: scripts/demo.sh stop
EOT
