#!/bin/sh
# Installs what the browser test (tests/browser/) needs: Debian's Chromium (Playwright drives it
# at /usr/bin/chromium; no browser is ever downloaded, `playwright install` is not used) and, when
# a Python is named, the Python packages JupyterLab and Playwright into it.
#
#   .ci/install-browser.sh                      # Chromium only (CI: hatch's test env has the rest)
#   .ci/install-browser.sh path/to/bin/python   # also jupyterlab + playwright into that Python
#
# Idempotent. Needs root or sudo for apt-get. Called by .ci/run.
set -eu

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-browser: not root and no sudo; cannot install chromium" >&2
        exit 1
    fi
fi

if [ -x /usr/bin/chromium ]; then
    echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) is present"
else
    echo "install-browser: installing chromium from Debian"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # fonts: so that text in the screenshots is rendered (Recommends are not installed)
    $SUDO apt-get install -y -qq --no-install-recommends \
        chromium fonts-liberation fonts-dejavu-core >/dev/null
    /usr/bin/chromium --version
fi

if [ "$#" -ge 1 ]; then
    python="$1"
    echo "install-browser: installing jupyterlab and playwright into $python"
    if command -v uv >/dev/null 2>&1; then
        uv pip install --quiet --python "$python" jupyterlab playwright
    else
        "$python" -m pip install --quiet jupyterlab playwright
    fi
fi
