#!/usr/bin/env bash
# Creates .venv/ at the repo root with cxrscreen and everything its tests need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first, so nothing later pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# Headless Chromium for the web page's browser test (Debian package; no browser download). Without it the
# browser test is skipped on a workstation but fails in CI, so a setup that cannot install it fails here, loudly.
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
            || { echo "setup: error: apt-get could not install chromium (needed by tests/serve/test_serve_browser.py)" >&2; exit 1; }
    else
        echo "setup: error: /usr/bin/chromium is missing; install the Debian package chromium as root (the browser test needs it)" >&2
        exit 1
    fi
fi
# The DICOM tests need a real PACS (Orthanc), dcmtk's storescu and dicom3tools' dciodvfy (Debian packages). The
# tests skip without them on a workstation but fail under CI=true, so a setup that cannot install them fails here.
missing=()
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
command -v storescu >/dev/null || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || { echo "setup: error: apt-get could not install ${missing[*]} (needed by tests/dicom/)" >&2; exit 1; }
    else
        echo "setup: error: missing ${missing[*]}; install these Debian packages as root (tests/dicom/ needs them)" >&2
        exit 1
    fi
fi
