#!/usr/bin/env bash
# Writes man pages and bash/zsh/fish completions for every binary, generated
# from their clap definitions (so they match --help), into OUT (default
# target/docs): OUT/man/*.1 (users' commands), OUT/man/*.8 (the daemons)
# and OUT/completions/*. PROFILE: debug (default) or release, the build
# whose binaries write them.
#   scripts/gen-docs.sh [OUT] [PROFILE]
#   man -l target/docs/man/ssh-to-job.1
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/docs}"
PROFILE="${2:-debug}"
case "$PROFILE" in
  debug) cargo build --workspace --locked ;;
  release) cargo build --release --locked -p stj-schedd -p stj-starter -p ssh-to-job -p stj-proxy-cmd -p stj-preload ;;
  *) echo "gen-docs: PROFILE is debug or release, not $PROFILE" >&2; exit 2 ;;
esac
for b in stj-schedd stj-starter stj ssh-to-job; do
  "target/$PROFILE/$b" generate-docs "$OUT"
done
"target/$PROFILE/stj-proxy" --generate-docs "$OUT"
echo "man pages in $OUT/man, completions in $OUT/completions"
