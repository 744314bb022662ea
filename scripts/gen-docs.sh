#!/usr/bin/env bash
# Writes man pages and bash/zsh/fish completions for every binary, generated
# from their clap definitions (so they match --help), into OUT (default
# target/docs): OUT/man/*.1 and OUT/completions/*.
#   scripts/gen-docs.sh [OUT]
#   man -l target/docs/man/ssh-to-job.1
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/docs}"
cargo build --workspace --locked
for b in stj-schedd stj-starter stj ssh-to-job; do
  "target/debug/$b" generate-docs "$OUT"
done
target/debug/stj-proxy --generate-docs "$OUT"
echo "man pages in $OUT/man, completions in $OUT/completions"
