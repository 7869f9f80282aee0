#!/usr/bin/env bash
# Install what the page tests need (idempotent; safe to run on every CI run):
#   * Debian's chromium at /usr/bin/chromium, which tests/serving/test_page.py drives headless through
#     playwright's `executable_path` (playwright's own browser download is never used).
# The playwright Python package itself comes with the test extra of pyproject.toml.
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
/usr/bin/chromium --version >/dev/null
