#!/usr/bin/env bash
# Installs, from Debian's archive, the programs the documentation's
# transcripts call beside wasmux: curl, jq and openssl (the TLS chapter's
# certificates), and the fleet's haproxy, docker-registry, redis-server and
# prometheus. Only what is missing is installed, with apt-get as root or
# through `sudo -n` (examples/cluster/install-deps.sh does it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../examples/cluster/install-deps.sh" haproxy docker-registry redis-server prometheus curl jq openssl
