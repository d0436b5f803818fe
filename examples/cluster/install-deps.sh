#!/usr/bin/env bash
# Installs, from Debian's archive, the programs the fleet example and its
# tests run: haproxy (2.6 in Debian 12), docker-registry (2.8),
# redis-server (7.0, the fleet's shared key-value store) and prometheus
# (2.42, scraping the fleet's metrics). Only what
# is missing is installed, with apt-get as root or through `sudo -n`, the
# way `cargo xtask` installs the wasm toolchain.
#
#   examples/cluster/install-deps.sh                  # all four
#   examples/cluster/install-deps.sh redis-server     # just one
#   (curl, jq and openssl too, for the documentation's transcripts)
set -euo pipefail

# What the documentation's transcripts also call (docs-test/install-deps.sh).
known=(haproxy docker-registry redis-server prometheus curl jq openssl)
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(haproxy docker-registry redis-server prometheus)

missing=()
for package in "${packages[@]}"; do
    # Each package's program has the package's name.
    [[ " ${known[*]} " == *" $package "* ]] || { echo "install-deps.sh: unknown package $package (${known[*]})" >&2; exit 2; }
    command -v "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    apt=(apt-get)
elif sudo -n true 2>/dev/null; then
    apt=(sudo -n apt-get)
else
    echo "install-deps.sh: ${missing[*]} missing; install as root: apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "install-deps.sh: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" update -qq
# The example never uses the packages' own services. Under systemd they
# start on install: docker-registry's listens on port 5000 of every
# interface, redis-server's on 127.0.0.1:6379, prometheus's on port 9090
# of every interface; `systemctl disable --now docker-registry haproxy
# redis-server prometheus` stops them.
"${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2
