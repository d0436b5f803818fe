#!/usr/bin/env bash
# Installs, from Debian's archive, the programs the documentation's
# transcripts call beside wasmux: curl, jq and openssl (the TLS chapter's
# certificates), and the fleet's haproxy and docker-registry
# (examples/cluster/install-deps.sh). Only what is missing is installed,
# with apt-get as root or through `sudo -n`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

missing=()
for program in curl jq openssl; do
    command -v "$program" >/dev/null 2>&1 || missing+=("$program")
done
if [ ${#missing[@]} -gt 0 ]; then
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
    "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
"$here/../examples/cluster/install-deps.sh"
