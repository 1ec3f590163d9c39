# shellcheck shell=bash
# Sourced by .ci/run (or by hand: `source .ci/chromium.sh`): Debian's chromium for the browser tests (tests/browser.py).
# Playwright's own browser download is unreachable from CI, so the tests drive /usr/bin/chromium; it is installed
# from Debian packages when missing.
if [[ ! -x /usr/bin/chromium ]]; then
    ftflow_chromium_sudo=""
    [[ $(id -u) -eq 0 ]] || ftflow_chromium_sudo=sudo
    echo "chromium: installing the Debian package"
    $ftflow_chromium_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $ftflow_chromium_sudo apt-get install -y -qq chromium >/dev/null
    unset ftflow_chromium_sudo
fi
