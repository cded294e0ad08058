#!/usr/bin/python3
"""Dependencies point one way: down the data flow (docs/architecture.md).

Every file under src/ gets a layer from LAYERS (the first pattern that
matches its path below src/). An #include "x.h" may point to a file of the
same layer or of a layer below; one that points up is a violation. The
include graph between modules (x.c, x.h and x_int.h or x_internal.h are one module) must also
have no cycle, so that files of one layer cannot include each other in a
circle either.

ALLOWED_UP lists the upward includes that are still in the tree, each with
what removes it. The check fails on an upward include that is not listed and
on a listed one that is gone: the list can only shrink. Before the real
tree it checks a few made-up ones (self_test). Run by `make lint`
(part of `make check`); `tests/check_includes.py -v` prints every file's
layer.
"""
import fnmatch
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

# Top to bottom: (layer name, patterns of paths below src/). A file may
# include only files of its own layer or of a layer further down the list.
LAYERS = [
    ("main", ["main.c"]),
    ("daemon services and commands of main",
     ["status_cmd.*", "env_cmd.*", "trust_cmd.*", "warm_cmd.*", "admin_client.*", "notify.*"]),
    ("listen", ["listen.*"]),
    ("client session", ["downstream.*", "client/h1_*", "client/h2_*"]),
    ("exchange and tunnel", ["exchange.*", "tunnel.*"]),
    # what the exchange knows of a client session: an interface, like upstream.h
    ("client session interface", ["client/session.h"]),
    # the status page and metrics: read the pool's, the CA's and the
    # config's state; called by the client session
    ("admin", ["admin.*", "admin_warm.*"]),
    ("pool", ["pool.*", "pool_*.*"]),
    ("upstream codecs", ["upstream/*"]),
    ("transport layers", ["transport/*"]),
    # struct muxd: the daemon's root state, passed down as a pointer
    ("root state", ["muxd.*"]),
    ("log", ["log.*"]),
    ("routes", ["route.*"]),
    ("config values", ["config.*", "config_*.*"]),
    ("leaves", ["http1.*", "via.*", "altsvc.*", "dns.*", "errors.*", "timeutil.*", "hold.h", "heap.*",
                "tls/ca.*"]),
]

# Upward includes still in the tree: (file, include as written, what removes
# it). Delete a line when its include goes away (the check insists).
ALLOWED_UP = []

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_of(rel):
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(rel, p) for p in patterns):
            return i
    return None


def module_of(rel):
    """x.c, x.h and x's internal header (x_int.h or x_internal.h) are one
    module."""
    m = os.path.splitext(rel)[0]
    for suffix in ("_internal", "_int"):
        if m.endswith(suffix):
            return m[: -len(suffix)]
    return m


def source_files(src):
    out = []
    for d, _, files in os.walk(src):
        for f in files:
            if f.endswith((".c", ".h")):
                out.append(os.path.relpath(os.path.join(d, f), src))
    return sorted(out)


def resolve(src, rel, inc):
    """The path below src/ that #include "inc" in src/rel names (-Isrc
    first, then the including file's directory), or None."""
    for cand in (inc, os.path.join(os.path.dirname(rel), inc)):
        cand = os.path.normpath(cand)
        if os.path.isfile(os.path.join(src, cand)):
            return cand
    return None


def find_cycle(edges):
    """One cycle in the module graph {module: set(modules)}, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def check(src, allowed, verbose=False):
    """The violations in the tree src, as messages (none: it passes)."""
    errors = []
    found_up = set()
    edges = {}
    files = source_files(src)

    for rel in files:
        if layer_of(rel) is None:
            errors.append(f"src/{rel}: no layer: add it to LAYERS in tests/check_includes.py")
    if errors:
        return errors

    for rel in files:
        mine = layer_of(rel)
        if verbose:
            print(f"{LAYERS[mine][0]:>24}  src/{rel}")
        with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        for inc in INCLUDE.findall(text):
            target = resolve(src, rel, inc)
            if target is None:
                errors.append(f'src/{rel}: #include "{inc}": no such file under src/')
                continue
            theirs = layer_of(target)
            if theirs < mine:
                if (rel, inc) in {(a, b) for a, b, _ in allowed}:
                    found_up.add((rel, inc))
                else:
                    errors.append(
                        f'src/{rel} ({LAYERS[mine][0]}) includes "{inc}" '
                        f"({LAYERS[theirs][0]}): an include that points up the layer order")
                continue  # upward edges stay out of the cycle check
            a, b = module_of(rel), module_of(target)
            if a != b:
                edges.setdefault(a, set()).add(b)

    for rel, inc, why in allowed:
        if (rel, inc) not in found_up:
            errors.append(f'ALLOWED_UP: src/{rel} no longer includes "{inc}" upward '
                          f"({why}): delete its line from tests/check_includes.py")

    cycle = find_cycle(edges)
    if cycle:
        errors.append("include cycle between modules: " + " -> ".join(cycle))
    return errors


def self_test():
    """The checker on small made-up trees: each case must pass or fail as
    stated, so that a broken checker cannot pass the real tree silently."""
    import tempfile

    cases = [
        # (name, {file: includes}, allowed, expected message or None)
        ("includes point down", {"pool.c": ["pool.h", "transport/transport.h"], "pool.h": [],
                                 "transport/transport.h": ["errors.h"], "errors.h": []},
         [], None),
        ("an include points up", {"transport/tcp.c": ["pool.h"], "pool.h": []},
         [], "points up"),
        ("an allowlisted upward include", {"transport/tcp.c": ["pool.h"], "pool.h": []},
         [("transport/tcp.c", "pool.h", "test")], None),
        ("an allowlisted include is gone", {"transport/tcp.c": [], "pool.h": []},
         [("transport/tcp.c", "pool.h", "test")], "no longer includes"),
        ("a file without a layer", {"frobnicate.c": []}, [], "no layer"),
        ("a cycle inside a layer", {"http1.h": ["errors.h"], "errors.h": ["http1.h"]},
         [], "include cycle"),
        ("an include of a missing file", {"http1.c": ["nothere.h"]}, [], "no such file"),
    ]
    failed = 0
    for name, tree, allowed, expect in cases:
        with tempfile.TemporaryDirectory() as d:
            for rel, incs in tree.items():
                os.makedirs(os.path.join(d, os.path.dirname(rel)), exist_ok=True)
                with open(os.path.join(d, rel), "w") as f:
                    f.write("".join(f'#include "{i}"\n' for i in incs))
            errors = check(d, allowed)
        ok = not errors if expect is None else any(expect in e for e in errors)
        if not ok:
            failed += 1
            print(f"check_includes: self-test '{name}' went wrong: {errors}", file=sys.stderr)
    return failed == 0


def main():
    if not self_test():
        return 1
    return report(check(SRC, ALLOWED_UP, verbose="-v" in sys.argv[1:]))


def report(errors):
    for e in errors:
        print(f"check_includes: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"check_includes: dependencies point down ({len(ALLOWED_UP)} allowlisted upward "
          "includes left)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
