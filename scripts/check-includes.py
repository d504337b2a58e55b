#!/usr/bin/env python3
"""check-includes.py - the include graph of cbd's sources follows its layers.

Layers, lowest first (a file may include headers of its own layer and of
layers below, never above):

    common        the shared contract (layout, wire format, log) and libcb's
                  public cb.h
    libcb         the client library (libcb/src: private to libcb)
    aws           the AWS client: signed HTTP on a loop, credentials,
                  dynamodb:// URIs (beside libcb: neither uses the other)
    persistence   the stores and the fleet layer
    daemon        cbd
    tools         cbctl and other clients: common, libcb and aws only

Besides the layers: libcb/src headers are private to libcb/src; and the
module graph (a module is a .c file and its .h, an edge goes from a module
to every module whose header it includes) has no cycle.

  scripts/check-includes.py           check; exit 1 and name every fault
  scripts/check-includes.py --graph   print the module graph (DOT) and check
"""
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
LAYERS = {"common": 0, "libcb/include": 0, "libcb/src": 1, "aws": 1, "persistence": 2, "daemon": 3, "tools": 4}
# tools sit on common, libcb and the AWS client only: nothing of the daemon or the stores
FORBIDDEN = {"tools": {"daemon", "persistence"}}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_of(rel):
    for d in sorted(LAYERS, key=len, reverse=True):
        if rel.startswith(d + "/"):
            return d
    return None


def sources():
    for d in LAYERS:
        top = os.path.join(ROOT, d)
        if not os.path.isdir(top):
            continue
        for name in sorted(os.listdir(top)):
            if name.endswith((".c", ".h")):
                yield os.path.join(d, name)


def main():
    files = list(sources())
    by_name = {}
    for f in files:
        by_name.setdefault(os.path.basename(f), []).append(f)
    faults, edges = [], set()
    for f in files:
        here = layer_of(f)
        with open(os.path.join(ROOT, f), encoding="utf-8") as fh:
            text = fh.read()
        for inc in INCLUDE.findall(text):
            cands = by_name.get(os.path.basename(inc), [])
            same_dir = [c for c in cands if os.path.dirname(c) == os.path.dirname(f)]
            target = (same_dir or cands or [None])[0]
            if target is None:
                continue  # a system or generated header
            there = layer_of(target)
            if LAYERS[there] > LAYERS[here]:
                faults.append(f"{f}: includes {target} of the higher layer {there}")
            if there in FORBIDDEN.get(here, ()):
                faults.append(f"{f}: includes {target}: {here} may not use {there}")
            if there == "libcb/src" and here != "libcb/src":
                faults.append(f"{f}: includes {target}, private to libcb")
            a, b = os.path.splitext(f)[0], os.path.splitext(target)[0]
            if a != b:
                edges.add((a, b))
    # cycles in the module graph (depth-first search, iterative)
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    color, stack_cycles = {}, []

    def visit(start):
        path, it = [start], [iter(sorted(graph.get(start, ())))]
        color[start] = 1
        while path:
            nxt = next(it[-1], None)
            if nxt is None:
                color[path.pop()] = 2
                it.pop()
            elif color.get(nxt) == 1:
                stack_cycles.append(path[path.index(nxt):] + [nxt])
            elif color.get(nxt) is None:
                color[nxt] = 1
                path.append(nxt)
                it.append(iter(sorted(graph.get(nxt, ()))))

    for m in sorted(graph):
        if color.get(m) is None:
            visit(m)
    for cyc in stack_cycles:
        faults.append("module cycle: " + " -> ".join(cyc))
    if "--graph" in sys.argv:
        print("digraph includes {")
        for a, b in sorted(edges):
            print(f'  "{a}" -> "{b}";')
        print("}")
    for x in faults:
        print("check-includes: " + x, file=sys.stderr)
    print(f"check-includes: {len(files)} files, {len(edges)} module edges, {len(faults)} faults", file=sys.stderr)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
