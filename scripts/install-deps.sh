#!/usr/bin/env bash
# Installs the system packages ssh-to-job needs to build, run and test, on
# Debian/Ubuntu, as root. Idempotent: installs only what is missing.
set -euo pipefail

PKGS=(
  protobuf-compiler   # protoc, for the .proto files in proto/
  gcc libc6-dev       # SQLite (bundled) and ring build C code
  openssh-server      # sshd, started per session inside the job
  openssh-client      # ssh, scp, sftp
  rsync               # rsync over ssh-to-job
  iproute2 iptables   # network namespaces for the NAT tests
  busybox-static      # tiny rootfs images for the container tests
  procps              # ps, used by tests inside jobs
  passwd              # useradd, for test users
  git                 # git over ssh-to-job (tests)
  bsdutils            # script(1): a real pty for the interactive tests
  python3             # attack scripts in the tests (raw sockets as another user)
  python3-paramiko    # a non-OpenSSH client (Fabric, Ansible -c paramiko) in the tests
  ansible-core        # `ansible -c paramiko -m ping` into a job (tests)
  xvfb x11-utils xauth  # X11 forwarding into a job: a virtual X server, xdpyinfo (tests)
  runc                # rootless OCI containers a job starts itself, and Slurm's --container (tests)
  slurm-wlm munge     # a real slurmctld and slurmd for the Slurm tests (started by hand, tests/src/slurm.rs)
  prometheus          # promtool, which checks what the daemons' metrics endpoints serve (tests)
  dpkg-dev binutils   # packages (scripts/package.sh): dpkg-shlibdeps for Depends, objcopy for -dbgsym
  systemd man-db      # systemd-analyze verify on the packages' units, and the man pages they name (tests)
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: run as root (it uses apt-get)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain >= 1.80 (https://rustup.rs) and re-run" >&2
  exit 1
fi

# cargo-deb builds the Debian packages (scripts/package.sh): a pinned
# version, so packages come out the same on every machine.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  echo "install-deps: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi
