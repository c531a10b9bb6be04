#!/bin/sh
# Installs the language toolchains the language tests (tests/languages/) use, from Debian's
# packages (and npm, for LibreChat's client in tests/code_api/test_librechat.py). Idempotent: packages already present are skipped. Called by .ci/run; safe to run by
# hand (needs root or sudo). A toolchain that cannot be installed makes its tests skip with a
# reason, so a failure here is reported but does not stop the run.
set -u

# command that proves the toolchain works -> Debian package that provides it
PACKAGES="
bash:bash
gcc:gcc
g++:g++
javac:openjdk-17-jdk-headless
node:nodejs
npm:npm
tsc:node-typescript
go:golang-go
php:php-cli
Rscript:r-base-core
gfortran:gfortran
ldc2:ldc
rustc:rustc
"

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-languages: not root and no sudo; skipping toolchain installs" >&2
        exit 0
    fi
fi

missing=""
for pair in $PACKAGES; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    # rustc under /usr/bin is what the sandbox sees; a rustup install in ~/.cargo is not enough.
    if [ "$cmd" = "rustc" ] || [ "$cmd" = "tsc" ] || [ "$cmd" = "node" ]; then
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            continue
        fi
        if [ "$cmd" = "node" ] && [ -x /usr/bin/node ]; then continue; fi
    elif command -v "$cmd" >/dev/null 2>&1; then
        continue
    fi
    missing="$missing $pkg"
done

if [ -z "$missing" ]; then
    echo "install-languages: every toolchain is present"
    exit 0
fi
echo "install-languages: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "install-languages: apt-get update failed" >&2
for pkg in $missing; do
    # one package at a time, so one that is unavailable does not block the others
    if ! $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; then
        echo "install-languages: could not install $pkg; its language tests will be skipped" >&2
    fi
done
exit 0
