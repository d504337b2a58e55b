#!/usr/bin/env bash
# run.sh [BUILD_DIR] - the Python binding's tests, as ctest runs them (label python).
#
# Makes a venv in BUILD_DIR/python-venv (Debian's /usr/bin/python3 with
# --system-site-packages, so pytest and gunicorn come from apt), installs
# ./python into it against BUILD_DIR/libcb.a, and runs tests/python with pytest
# against BUILD_DIR/cbd. Exit status 77 (ctest: skipped) when Python's headers
# (python3-dev), venv or pytest are missing: ./scripts/setup.sh installs them.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
py=/usr/bin/python3

skip() { echo "python tests skipped: $*" >&2; exit 77; }
[[ -x $py ]] || skip "$py not found"
inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[[ -f $inc/Python.h ]] || skip "no $inc/Python.h: install python3-dev (./scripts/setup.sh)"
"$py" -c 'import venv, ensurepip' 2>/dev/null || skip "python3-venv missing (./scripts/setup.sh)"
"$py" -c 'import pytest' 2>/dev/null || skip "python3-pytest missing (./scripts/setup.sh)"
[[ -f $build/libcb.a && -x $build/cbd ]] || { echo "run.sh: build $build first" >&2; exit 1; }

venv=$build/python-venv
[[ -x $venv/bin/python ]] || "$py" -m venv --system-site-packages "$venv"
# --no-index: nothing to fetch (the package has no dependencies; setuptools
# and wheel are Debian's, seen through --system-site-packages).
CB_BUILD_DIR=$build "$venv/bin/pip" install --no-index --quiet --force-reinstall "$src/python"
rm -rf "$src/python/build" "$src/python/cbd.egg-info"
cd "$build"
CBD=$build/cbd exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$src/tests/python" "${@:2}"
