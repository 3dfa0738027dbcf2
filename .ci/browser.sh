#!/bin/sh
# The console's browser tests (tests/e2e/test_console.py) drive Debian's chromium through its
# chromedriver: install both when either is missing. Browser builds that tools download
# themselves cannot be fetched here; the distribution's packages can.
set -eu
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
/usr/bin/chromium --version
/usr/bin/chromedriver --version
