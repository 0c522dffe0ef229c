#!/usr/bin/env python3
"""Fails when a Rust crate's files or top-level modules import each other in a cycle.

Usage: import_cycles.py SRC_DIR [SRC_DIR ...]   (each a crate's src/, with lib.rs or main.rs)

An edge A -> B means file A names an item *defined* in file B (`use crate::x::Y`, `super::Y`,
`self::y::Z`, a child module's item, or such a path inline in code). Re-exports (`pub use`) are
followed to where the item is defined, so a parent's facade (`pub use child::Item`) is not a
dependency of its own, and module declarations (`mod x;`) are containment, not imports. Test code
(`tests.rs`, files under `tests/`, `#[cfg(test)]` items) is left out: tests may look anywhere.

Besides files, the crate's top-level modules (`crate::probes`, `crate::config`, ...) are checked
as a graph of their own. Prints every cycle (strongly connected component) and exits 1 if any.

KNOWN lists back-arrows that are being removed elsewhere (each with who and why); they are left
out of the graphs. An entry whose arrow no longer exists fails the check too, so that the list
only ever shrinks: delete the entry when its arrow is gone.
"""

import os
import re
import sys
from collections import defaultdict

# (crate src dir, "from -> to" as printed: files relative to src/, or top-level modules).
KNOWN = {
}

ITEM_RE = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+|async\s+|const\s+(?=fn))*"
    r"(fn|struct|enum|trait|type|const|static|union|mod)\s+([A-Za-z_][A-Za-z0-9_]*)",
    re.M,
)
MACRO_RE = re.compile(r"^\s*macro_rules!\s*([A-Za-z_][A-Za-z0-9_]*)", re.M)
USE_RE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.S)
INLINE_RE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def strip_code(text):
    """Comments, string and char literals out; test-only items out."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == '"' or text.startswith('r"', i) or text.startswith("r#", i) or text.startswith('b"', i):
            if text.startswith("r", i) or text.startswith("br", i):
                m = re.match(r'b?r(#*)"', text[i:])
                if m:
                    end = '"' + m.group(1)
                    j = text.find(end, i + m.end())
                    i = n if j < 0 else j + len(end)
                    out.append('""')
                    continue
            if text.startswith('b"', i):
                i += 1
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            i += m.end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    code = "".join(out)
    return drop_cfg_test(code)


def drop_cfg_test(code):
    """Removes items marked #[cfg(test)] (a `mod x { ... }` block, a `mod x;`, a `use ...;`, or
    any item up to its matching brace or semicolon)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", code)
        if not m:
            return code
        i = m.end()
        depth = 0
        j = i
        while j < len(code):
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif ch == ";" and depth == 0:
                j += 1
                break
            j += 1
        code = code[: m.start()] + code[j:]


class Crate:
    def __init__(self, src):
        self.src = src
        self.root = "lib.rs" if os.path.exists(os.path.join(src, "lib.rs")) else "main.rs"
        self.files = {}  # module path tuple -> file path
        self.code = {}  # file -> stripped code
        self.children = defaultdict(set)  # module -> child module names
        self.inline = {}  # inline module path -> file defining it
        self.walk((), os.path.join(src, self.root))

    def walk(self, module, path):
        if module and module[-1] == "tests":
            return
        with open(path, encoding="utf-8") as f:
            code = strip_code(f.read())
        self.files[module] = path
        self.code[path] = code
        base = os.path.dirname(path)
        if not (path.endswith("mod.rs") or path.endswith(self.root)):
            base = os.path.join(base, os.path.basename(path)[:-3])
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", code, re.M):
            name = m.group(1)
            for cand in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
                if os.path.exists(cand):
                    self.children[module].add(name)
                    self.walk(module + (name,), cand)
                    break

    def defined(self, module):
        code = self.code[self.files[module]]
        names = {m.group(2) for m in ITEM_RE.finditer(code)}
        names |= {m.group(1) for m in MACRO_RE.finditer(code)}
        return names

    def reexports(self, module):
        out = {}
        code = self.code[self.files[module]]
        for m in USE_RE.finditer(code):
            if not m.group(1):
                continue
            for raw in self.use_paths(m.group(2)):
                path, alias = raw
                if path:
                    out[alias] = (module, path)
        return out

    @staticmethod
    def use_paths(tree):
        """[(segments, bound name)] for a use tree."""
        tree = re.sub(r"\s+", " ", tree).strip()
        res = []

        def parse(s, prefix):
            depth, start, parts = 0, 0, []
            for k, ch in enumerate(s):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                elif ch == "," and depth == 0:
                    parts.append(s[start:k])
                    start = k + 1
            parts.append(s[start:])
            for part in parts:
                part = part.strip()
                if not part:
                    continue
                b = part.find("{")
                if b >= 0:
                    head = [x.strip() for x in part[:b].split("::") if x.strip()]
                    parse(part[b + 1 : part.rfind("}")], prefix + head)
                    continue
                alias = None
                m = re.match(r"(.*?)\s+as\s+([A-Za-z_][A-Za-z0-9_]*)$", part)
                if m:
                    part, alias = m.group(1), m.group(2)
                segs = prefix + [x.strip() for x in part.split("::") if x.strip()]
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                if segs and segs[-1] != "*":
                    res.append((segs, alias or segs[-1]))

        parse(tree, [])
        return res

    def absolute(self, module, segs):
        """A path as used in `module` -> absolute module-path segments, or None (external)."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return list(segs[1:])
        if head == "self":
            return list(module) + list(segs[1:])
        if head == "super":
            cur = list(module)
            k = 0
            while k < len(segs) and segs[k] == "super":
                cur = cur[:-1]
                k += 1
            return cur + list(segs[k:])
        if head in self.children[module]:
            return list(module) + list(segs)
        return None

    def resolve(self, segs, seen=None):
        """Absolute segments -> the file that defines the item (following re-exports)."""
        seen = seen or set()
        module = ()
        for k, seg in enumerate(segs):
            if seg in self.children[module]:
                module = module + (seg,)
                continue
            if (module, seg) in seen:
                return self.files[module]
            seen.add((module, seg))
            if seg in self.defined(module):
                return self.files[module]
            re_ = self.reexports(module).get(seg)
            if re_:
                at, path = re_
                target = self.absolute(at, path)
                if target is None:
                    return None  # an external crate's item
                return self.resolve(target + list(segs[k + 1 :]), seen)
            return self.files[module]
        return self.files[module]

    def edges(self):
        graph = defaultdict(set)
        for module, path in self.files.items():
            code = self.code[path]
            paths = []
            for m in USE_RE.finditer(code):
                if m.group(1):
                    # A re-export is a name, not a dependency: its users are resolved through it.
                    continue
                paths.extend(p for p, _ in self.use_paths(m.group(2)))
            body = USE_RE.sub("", code)
            paths.extend(m.group(1).split("::") for m in INLINE_RE.finditer(body))
            for segs in paths:
                target = self.absolute(module, segs)
                if target is None:
                    continue
                f = self.resolve(target)
                if f and f != path:
                    graph[path].add(f)
        return graph


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(graph) | {v for vs in graph.values() for v in vs}
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def self_test():
    """The checker finds a cycle through `use`, through an inline path and through a re-export,
    and none in a facade whose children use their parent."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        def write(rel, text):
            path = os.path.join(d, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)

        write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n")
        write("a/mod.rs", "mod inner;\npub use inner::Thing;\npub struct Base;\n")
        write("a/inner.rs", "use super::Base;\npub struct Thing(Base);\n")
        write("b.rs", "use crate::a::Thing;\npub fn f() {}\n")
        write("c.rs", "pub fn g() { crate::b::f(); }\n// crate::a::Thing in a comment\n")
        clean = Crate(d).edges()
        assert not cycles(clean), cycles(clean)
        # a/inner.rs -> b.rs (inline path) closes b.rs -> a/inner.rs (through the re-export).
        write("a/inner.rs", "use super::Base;\npub struct Thing(Base);\nfn h() { crate::b::f() }\n")
        found = cycles(Crate(d).edges())
        want = [sorted([os.path.join(d, "a/inner.rs"), os.path.join(d, "b.rs")])]
        assert found == want, found
    print("import_cycles self-test: ok")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) < 2:
        print(__doc__)
        return 2
    found = 0
    for src in argv[1:]:
        crate = Crate(src)
        key = os.path.normpath(src)
        known = {e for (s, e) in KNOWN if os.path.normpath(s) == key or key.endswith(os.sep + s)}
        graph = crate.edges()
        rel = lambda p: os.path.relpath(p, src)
        top = defaultdict(set)
        for a, bs in graph.items():
            for b in bs:
                ma, mb = rel(a).split(os.sep)[0], rel(b).split(os.sep)[0]
                ma, mb = ma.removesuffix(".rs"), mb.removesuffix(".rs")
                if ma != mb:
                    top[ma].add(mb)
        seen = set()
        for g, name in ((graph, rel), (top, lambda m: m)):
            for a in list(g):
                for b in list(g[a]):
                    edge = f"{name(a)} -> {name(b)}"
                    if edge in known:
                        seen.add(edge)
                        g[a].discard(b)
        for edge in sorted(known - seen):
            found += 1
            print(f"{src}: known back-arrow {edge} is gone: delete it from KNOWN in {sys.argv[0]}")
        for kind, g, name in (("files", graph, rel), ("modules", top, lambda m: m)):
            for comp in cycles(g):
                found += 1
                members = set(comp)
                print(f"{src}: import cycle between {kind}: {', '.join(name(c) for c in comp)}")
                for a in comp:
                    for b in sorted(g[a] & members):
                        print(f"    {name(a)} -> {name(b)}")
        print(f"{src}: {len(crate.files)} files, {sum(len(v) for v in graph.values())} imports checked")
    if found:
        print(f"import cycles: {found}")
        return 1
    print("import cycles: none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
