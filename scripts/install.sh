#!/bin/sh
# Install the gateway into a new virtual environment: scripts/install.sh PREFIX [SOURCE]
#
# PREFIX  where the virtual environment goes (the Dockerfile uses /opt/gateway);
#         PREFIX/bin/gateway is the command.
# SOURCE  the project directory (default: this script's parent directory).
#
# The Dockerfile runs exactly this, and tests/test_container.py runs it into a
# temporary directory, so that what the image installs is what the test checks.
# PYTHON chooses the interpreter (default: python3); pip's own environment
# variables (PIP_INDEX_URL, PIP_FIND_LINKS, ...) apply as usual.
set -eu

prefix="${1:?usage: scripts/install.sh PREFIX [SOURCE]}"
source_dir="${2:-$(cd "$(dirname "$0")/.." && pwd)}"
python="${PYTHON:-python3}"

"$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --quiet "$source_dir"
"$prefix/bin/gateway" version
