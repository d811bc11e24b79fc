#!/usr/bin/env python3
"""Fails when a crate's top-level modules depend on each other in a cycle.

A module (a file or directory directly under `src/`) depends on another when its code,
outside comments and `#[cfg(test)]` blocks, names `crate::<other>`. The architecture
keeps these dependencies one way (docs/ARCHITECTURE.md); this check keeps it so.
Usage: .ci/module_cycles.py CRATE_SRC_DIR...
"""
import glob
import os
import re
import sys


def graph(root):
    deps = {}
    for path in glob.glob(os.path.join(root, "**", "*.rs"), recursive=True):
        top = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        text = open(path, encoding="utf-8").read()
        if "#[cfg(test)]" in text:
            text = text[: text.index("#[cfg(test)]")]
        code = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
        deps.setdefault(top, set()).update(re.findall(r"crate::(\w+)", code))
    return {m: {d for d in ds if d in deps and d != m} for m, ds in deps.items()}


def cycles(g):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


failed = False
for root in sys.argv[1:]:
    g = graph(root)
    for comp in cycles(g):
        failed = True
        print(f"{root}: module cycle {' <-> '.join(comp)}")
        for m in comp:
            print(f"  {m} -> {sorted(g[m] & set(comp))}")
sys.exit(1 if failed else 0)
