#!/usr/bin/env python3
"""The crate's import order, checked from the source.

Every `crate::…` path in the code of `src/` (in `use` items and inline; comments, doc comments
and string literals do not count) must point strictly downward in LAYERS, and name the module
that defines the item: not the crate root's re-exports (`crate::Error`), nor a folder module's
(`crate::kernels::Accum` when `Accum` is defined in `kernels/accum.rs`). Inside each folder
module, the files must not import each other in a cycle; a `mod.rs` that only declares and
re-exports its files (`pub use x::…`) depends on none of them.

Prints every violation as `file:line: message` and exits 1; prints a summary and exits 0 when
there is none. Run from anywhere: `python3 .ci/layers.py`.
"""

import os
import re
import sys

# Lowest first. A module may use only modules earlier in this list (and itself).
LAYERS = [
    "error",
    "memory",
    "rng",
    "shape",
    "arch",
    "simd",
    "par",
    "gemm",
    "kernels",
    "reference",
    "preprocess",
    "checkpoint",
    "distributed",
    "layer",
    "init",
    "model",
    "zoo",
    "onnx",
    "gradcheck",
    "optim",
    "metrics",
    "data",
    "augment",
    "stability",
    "train",
    "image",
]
RANK = {m: i for i, m in enumerate(LAYERS)}

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

DEFINITION = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+)?"
    r"(?:struct|enum|trait|fn|type|const|static|union|macro_rules!)\s+(\w+)"
)
MACRO = re.compile(r"^\s*macro_rules!\s+(\w+)")
PATH = re.compile(r"\bcrate::((?:\w+::)*)(\w+|\{)")
SUPER = re.compile(r"\bsuper::((?:\w+::)*)(\w+|\{)")
USE_GROUP = re.compile(r"\b(?:crate|super)::((?:\w+::)*)\{([^}]*)\}")


def code_lines(text):
    """The lines of `text` with comments and string literals blanked (line numbers kept)."""
    out, i, n = [], 0, len(text)
    buf = []
    depth = 0  # block comment nesting
    while i < n:
        c = text[i]
        if depth:
            if text.startswith("*/", i):
                depth -= 1
                i += 2
            elif text.startswith("/*", i):
                depth += 1
                i += 2
            else:
                buf.append("\n" if c == "\n" else " ")
                i += 1
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            buf.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth = 1
            i += 2
        elif c == '"' or (c == "r" and re.match(r'r#*"', text[i:]) and not re.match(r"\w", text[i - 1 : i] or " ")):
            if c == "r":
                m = re.match(r'r(#*)"', text[i:])
                end = '"' + m.group(1)
                j = text.find(end, i + len(m.group(0)))
                j = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                j = min(j + 1, n)
            buf.append("".join("\n" if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            buf.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            buf.append(c)
            i += 1
    return "".join(buf).split("\n")


class File:
    def __init__(self, path):
        self.path = path
        rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
        self.rel = "src/" + rel
        parts = rel[:-3].split("/")
        if parts[-1] == "mod":
            parts = parts[:-1]
        self.module = parts  # [] for lib.rs
        if parts == ["lib"]:
            self.module = []
        self.is_facade = rel.endswith("mod.rs") or rel == "lib.rs"
        with open(path, encoding="utf-8") as f:
            self.text = f.read()
        self.lines = code_lines(self.text)
        self.defines = set()
        for line in self.lines:
            m = DEFINITION.match(line) or MACRO.match(line)
            if m:
                self.defines.add(m.group(1))

    def folder(self):
        """The module path of the folder this file is a member of."""
        return self.module if self.is_facade else self.module[:-1]


def load():
    files = {}
    for dirpath, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                f = File(os.path.join(dirpath, name))
                files[tuple(f.module)] = f
    return files


def inline_mod_spans(lines):
    """Line ranges of inline `mod name { … }` blocks (where `super::` means the file itself)."""
    spans, stack, depth = [], [], 0
    for no, line in enumerate(lines):
        if re.match(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", line):
            stack.append((depth, no))
        for ch in line:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if stack and depth == stack[-1][0]:
                    spans.append((stack.pop()[1], no))
    return spans


def references(f):
    """(line number, absolute module path, first item name, is a `pub use`) for every path."""
    spans = inline_mod_spans(f.lines)
    own = f.module
    for no, line in enumerate(f.lines):
        is_pub_use = bool(re.match(r"^\s*pub(?:\([^)]*\))?\s+use\b", line))
        inside = any(a < no <= b for a, b in spans)
        for kind, rx in (("crate", PATH), ("super", SUPER)):
            for m in rx.finditer(line):
                segs = [s for s in m.group(1).split("::") if s]
                last = m.group(2)
                if kind == "crate":
                    base = []
                else:
                    # Inside an inline `mod tests { … }`, `super` is the file's own module.
                    base = own if inside else own[:-1]
                    # `super::super::x`
                    while segs and segs[0] == "super":
                        segs = segs[1:]
                        base = base[:-1]
                names = [last]
                if last == "{":
                    # A group may span lines: read on to its closing brace.
                    text, k = line[m.start():], no
                    while "}" not in text and k + 1 < len(f.lines):
                        k += 1
                        text += " " + f.lines[k]
                    g = USE_GROUP.search(text)
                    names = [
                        re.split(r"[\s:]", n.strip())[0]
                        for n in (g.group(2).split(",") if g else [])
                        if n.strip()
                    ]
                for name in names:
                    if name in ("self", ""):
                        yield no + 1, base + segs, None, is_pub_use
                    else:
                        yield no + 1, base + segs, name, is_pub_use


def resolve(files, path, name):
    """The module a path names (the longest prefix of `path + [name]` that is a file), and the
    item it names in it (None for the module itself)."""
    full = path + ([name] if name else [])
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in files:
            rest = full[k:]
            return full[:k], (rest[0] if rest else None)
    return [], full[0] if full else None


def main():
    files = load()
    errors = []
    edges = {}  # folder -> {(a, b): (file, line)}
    count = 0
    for key, f in sorted(files.items()):
        if not f.module:
            continue  # lib.rs: the crate's facade
        top = f.module[0]
        if top not in RANK:
            errors.append(f"{f.rel}:1: module `{top}` is not in LAYERS of .ci/layers.py")
            continue
        for line, path, name, is_pub_use in references(f):
            count += 1
            target, item = resolve(files, path, name)
            if not target:
                first = (path + [name])[0]
                errors.append(
                    f"{f.rel}:{line}: `crate::{first}` goes through the crate root's re-exports: import it from the module that defines it"
                )
                continue
            ttop = target[0]
            if ttop != top:
                if ttop not in RANK:
                    errors.append(f"{f.rel}:{line}: module `{ttop}` is not in LAYERS")
                elif RANK[ttop] > RANK[top]:
                    errors.append(
                        f"{f.rel}:{line}: `{top}` imports `{'::'.join(target)}`, a higher layer (order: {' < '.join(LAYERS)})"
                    )
            t = files[tuple(target)]
            if item and t.is_facade and item not in t.defines and tuple(target + [item]) not in files and not is_pub_use:
                errors.append(
                    f"{f.rel}:{line}: `{'::'.join(target + [item])}` is a re-export of `{'::'.join(target)}`: import it from the file that defines it"
                )
            # Edges between the files of one folder.
            folder = f.folder()
            if folder and target[: len(folder)] == folder:
                a = f.module[len(folder)] if len(f.module) > len(folder) else "mod"
                b = target[len(folder)] if len(target) > len(folder) else "mod"
                if a != b and not (a == "mod" and is_pub_use):
                    edges.setdefault(tuple(folder), {}).setdefault((a, b), (f.rel, line))
    # Cycles between the files of each folder.
    for folder, es in sorted(edges.items()):
        graph = {}
        for a, b in es:
            graph.setdefault(a, set()).add(b)
        for cycle in cycles(graph):
            where = ", ".join(
                f"{es[(cycle[i], cycle[(i + 1) % len(cycle)])][0]}:{es[(cycle[i], cycle[(i + 1) % len(cycle)])][1]}"
                for i in range(len(cycle))
            )
            errors.append(
                f"src/{'/'.join(folder)}: the files {' -> '.join(cycle + [cycle[0]])} import each other in a cycle ({where})"
            )
    errors = list(dict.fromkeys(errors))
    for e in errors:
        print(e)
    if errors:
        print(f"{len(errors)} layering violation(s)", file=sys.stderr)
        return 1
    print(f"layers: {count} crate paths in {len(files)} files point downward; no cycles")
    return 0


def cycles(graph):
    """One cycle per strongly connected component of more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(path_in(graph, set(comp)))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def path_in(graph, comp):
    """A cycle through the component `comp`."""
    start = min(comp)
    prev, queue, seen = {}, [start], {start}
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:
                cyc = [v]
                while cyc[-1] != start:
                    cyc.append(prev[cyc[-1]])
                return list(reversed(cyc))
            if w in comp and w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return sorted(comp)


if __name__ == "__main__":
    sys.exit(main())
