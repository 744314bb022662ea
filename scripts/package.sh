#!/usr/bin/env bash
# Builds the Debian packages into target/debian/ (a release build; man pages
# and completions generated from it):
#   stj-common   /etc/stj/stj.toml (a conffile, every knob commented), README
#                (Architecture: all)
#   stj-schedd   /usr/sbin/stj-schedd, stj-schedd.service (enabled, started)
#   stj-starter  /usr/sbin/stj-starter, libstj_preload.so, stj-starter.service
#                (installed, not started: the node needs its token first)
#   ssh-to-job   /usr/bin/ssh-to-job, stj, stj-proxy
# plus a -dbgsym .ddeb of each with the debug symbols. cargo-deb does the
# packaging (scripts/install-deps.sh installs it); the metadata is in each
# crate's Cargo.toml, units and maintainer scripts in packaging/.
#   scripts/package.sh [--fast]     (--fast: lighter compression, for tests)
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=()
case "${1:-}" in
  --fast) FAST=(--fast) ;;
  "") ;;
  *) echo "package.sh: unknown argument $1 (the only one is --fast)" >&2; exit 2 ;;
esac
if ! cargo deb --version >/dev/null 2>&1; then
  echo "package.sh: cargo-deb is missing: run scripts/install-deps.sh (or: cargo install cargo-deb --locked)" >&2
  exit 1
fi
rm -rf target/release/docs target/debian
scripts/gen-docs.sh target/release/docs release
# Debian policy: man pages and long documents gzipped (-n: no time stamp,
# so builds repeat).
gzip -9n target/release/docs/man/*
gzip -9n < README.md > target/release/docs/README.md.gz
cargo deb --no-build --locked "${FAST[@]}" -p stj-common
# stj-common holds no binaries: Architecture all, and no Depends field
# (cargo-deb names the build's architecture and writes an empty Depends).
common=$(ls target/debian/stj-common_*.deb)
tree=$(mktemp -d)
dpkg-deb --raw-extract "$common" "$tree"
sed -i -e 's/^Architecture: .*/Architecture: all/' -e '/^Depends: *$/d' "$tree/DEBIAN/control"
rm "$common"
dpkg-deb --root-owner-group --build "$tree" "${common%_*.deb}_all.deb" >/dev/null
rm -rf "$tree"
for p in stj-schedd stj-starter ssh-to-job; do
  cargo deb --no-build --locked "${FAST[@]}" --dbgsym -p "$p"
done
ls target/debian/*.deb
