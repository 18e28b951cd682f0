#!/usr/bin/env bash
# Starts a local shoal cluster: installs what a fresh Debian machine lacks, builds shoal, and runs
# `shoal dev` (3 managers on loopback, state in ./shoal-dev). Extra arguments go to `shoal dev`,
# e.g. `scripts/dev.sh --managers 5 --dir /tmp/shoal`. Ctrl-C stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in build-essential libclang-dev clang curl ca-certificates; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# nginx for `shoal dev --proxy` and the proxy tests: Debian's smallest build.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if ((${#need[@]})); then
    echo "installing ${need[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    # Newer Debian releases ship no nginx-light: their plain nginx package is the same thing.
    if [[ " ${need[*]} " == *" nginx-light "* ]] && ! apt-cache show nginx-light >/dev/null 2>&1; then
        need=("${need[@]/nginx-light/nginx}")
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "installing Rust with rustup"
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

export CARGO_TARGET_DIR="${SHOAL_TARGET_DIR:-$HOME/.cache/shoal/target}"
cargo build --bin shoal
exec "$CARGO_TARGET_DIR/debug/shoal" dev "$@"
