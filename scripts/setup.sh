#!/usr/bin/env bash
# setup.sh - install what cbd needs on Debian 12 and build it.
#
# Idempotent and fast on a re-run: apt is skipped when every package is
# already installed (dpkg-query), so a second run works offline, and
# `npm ci` for the test DynamoDB (dynalite) is skipped when node_modules was
# installed from the same lockfile. Runs as root, or through sudo.
#
# Environment:
#   CB_BUILD_DIR=DIR        build directory (default: build, build-asan, build-tsan)
#   CB_SANITIZE=asan|tsan   configure with -DCB_ASAN=ON or -DCB_TSAN=ON
#   CB_BUILD_TYPE=TYPE      CMAKE_BUILD_TYPE (default RelWithDebInfo)
#   CB_TARGETS="T1 T2"      build only these targets (default: everything)
set -euo pipefail
cd "$(dirname "$0")/.."

# The install line of shared/ENVIRONMENT.md plus the INI parser, gnuplot,
# socat, redis-sentinel (the Sentinel tests of the redis store), spin (the
# fleet protocol's model, tests/model), libmicrohttpd (the metrics endpoint),
# prometheus (promtool checks the metrics text in the tests; where systemd
# runs, the package also starts a Prometheus server on :9090), and Python's
# headers, venv, pytest and gunicorn (the Python binding's tests), tmux
# (the test of `cbctl top` drives it in a terminal). Never
# nodejs/npm: Node 20 comes with the machine, Debian's is too old.
PACKAGES=(build-essential cmake pkg-config libuv1-dev libhiredis-dev libmsgpack-dev libcriterion-dev
          libcurl4-openssl-dev libjansson-dev redis-server redis-tools clang libclang-rt-14-dev valgrind
          libinih-dev gnuplot-nox socat redis-sentinel spin libmicrohttpd-dev prometheus
          python3-dev python3-venv python3-pip python3-setuptools python3-pytest gunicorn tmux)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        say "all ${#PACKAGES[@]} Debian packages present"
        return
    fi
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || die "missing packages (${missing[*]}) and not root: run as root or install sudo"
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
}

# dynalite (an in-memory DynamoDB) for the store tests, pinned by the
# committed lockfile. A stamp with the lockfile's hash makes re-runs free.
install_dynalite() {
    local dir=tests/dynalite stamp=tests/dynalite/node_modules/.cbd-lock.sha256 want
    [[ -f $dir/package-lock.json ]] || return 0
    if ! command -v npm >/dev/null; then
        say "warning: npm not found; skipping dynalite (only the DynamoDB store tests need it)"
        return 0
    fi
    want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        say "dynalite present (tests/dynalite/node_modules matches the lockfile)"
        return 0
    fi
    say "npm ci --prefix $dir"
    if npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error; then
        echo "$want" >"$stamp"
    else
        say "warning: npm ci failed; the DynamoDB store tests will not find dynalite"
    fi
}

build() {
    local dir=${CB_BUILD_DIR:-} flags=()
    case ${CB_SANITIZE:-} in
        "") dir=${dir:-build} ;;
        asan) dir=${dir:-build-asan}; flags=(-DCB_ASAN=ON) ;;
        tsan) dir=${dir:-build-tsan}; flags=(-DCB_TSAN=ON) ;;
        *) die "CB_SANITIZE='$CB_SANITIZE' is not one of: asan, tsan" ;;
    esac
    say "configuring $dir${flags[*]:+ (${flags[*]})}"
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="${CB_BUILD_TYPE:-RelWithDebInfo}" "${flags[@]}" >/dev/null
    local targets=()
    read -r -a targets <<<"${CB_TARGETS:-}"
    say "building ${targets[*]:-everything} in $dir with $(nproc) jobs"
    cmake --build "$dir" -j"$(nproc)" ${targets[@]:+--target "${targets[@]}"}
}

install_packages
install_dynalite
build
say "done"
