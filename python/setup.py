"""Build cbd's Python binding: the _cbd C extension over libcb.

Where libcb comes from, first found wins:
  1. $CB_BUILD_DIR/libcb.a (a cmake build dir; relative to the repository root)
  2. ../build/libcb.a, the repository's default build directory
     (./scripts/setup.sh makes it)
  3. the installed libcb, through `pkg-config cb` (cmake --install)
The static library is linked into the extension, so the installed package
needs no libcb.so at run time; libcb's own dependency, msgpack-c, is linked
dynamically. There is no pyproject.toml on purpose: pip then builds with the
setuptools and wheel of the machine (Debian's python3-setuptools,
python3-wheel) instead of fetching them from an index.
"""

import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


def msgpack_libs():
    for name in ("msgpack-c", "msgpack"):
        libs = pkg_config("--libs", name)
        if libs is not None:
            return libs
    return ["-lmsgpackc"]


def libcb():
    """(include_dirs, extra_objects, extra_link_args) for libcb."""
    build = os.environ.get("CB_BUILD_DIR")
    candidates = []
    if build:
        candidates.append(build if os.path.isabs(build) else os.path.join(root, build))
    candidates.append(os.path.join(root, "build"))
    header = os.path.join(root, "libcb", "include", "cb.h")
    for d in candidates:
        archive = os.path.join(d, "libcb.a")
        if os.path.isfile(archive) and os.path.isfile(header):
            return [os.path.dirname(header)], [archive], msgpack_libs() + ["-lpthread"]
    cflags, libs = pkg_config("--cflags", "cb"), pkg_config("--libs", "cb")
    if cflags is not None and libs is not None:
        return [f[2:] for f in cflags if f.startswith("-I")], [], libs
    sys.exit(
        "cbd: libcb not found: build it first (./scripts/setup.sh makes build/libcb.a), set CB_BUILD_DIR "
        "to a cmake build directory, or install libcb (cmake --install build) so `pkg-config cb` finds it"
    )


include_dirs, extra_objects, link_args = libcb()

setup(
    name="cbd",
    version="0.1.0",
    description="Host-wide circuit breakers in shared memory (cbd), with Powertools' circuit_breaker API",
    long_description=open(os.path.join(here, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["cbd"],
    package_data={"cbd": ["py.typed", "*.pyi"]},
    ext_modules=[
        Extension(
            "cbd._cbd",
            sources=["cbd/_cbd.c"],
            include_dirs=include_dirs,
            extra_objects=extra_objects,
            extra_link_args=link_args,
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type"],
        )
    ],
    zip_safe=False,
)
