"""Merge MLIR modules that iree-turbine exported from the same subgraph, each with some of its functions.

A parallel export (builder/export_parts.py) traces a subgraph's functions in several processes; each
writes a module whose globals (the subgraph's weights and KV caches, `util.global`) are the same and
whose `func.func`s are its share. The merged module is the one a single process would have written:
the header, the shared top-level declarations once, every function in the function table's order,
and the union of the dialect resources (constants such as RoPE's frequencies, shared by name).

This works on turbine's printed text, not through the MLIR bindings: the printer's layout is fixed
(a top-level op starts on a line indented by two spaces; a function ends with `  }`), and a text
merge is byte-identical to a one-process export, which keeps the compile step's caches valid
(tests/test_export_parts.py checks the identity). Anything unexpected raises MergeError and the
caller exports in one process instead.
"""
from __future__ import annotations

import re

_FUNC = re.compile(r"^  func\.func @([\w$.-]+)\(")
_TOP = re.compile(r"^  [^ }]")
_RESOURCE = re.compile(r"^      ([^:\s]+): (\"0x[0-9A-Fa-f]*\"),?$")
_RES_HEAD = ["{-#", "  dialect_resources: {", "    builtin: {"]
_RES_TAIL = ["    }", "  }", "#-}"]


class MergeError(ValueError):
    """The parts do not have the layout this merge expects, or they disagree."""


def _split(text: str) -> tuple[str, list[str], dict[str, str], dict[str, str]]:
    """(header line, shared top-level chunks in order, functions by name, resources by name)."""
    lines = text.split("\n")
    if not lines or not lines[0].startswith("module @") or not lines[0].endswith("{"):
        raise MergeError(f"not a module: {lines[0][:60]!r}")
    try:
        end = lines.index("}")
    except ValueError:
        raise MergeError("the module is not closed") from None
    chunks: list[list[str]] = []
    for line in lines[1:end]:
        if _TOP.match(line):
            chunks.append([line])
        elif chunks:
            chunks[-1].append(line)
        else:
            raise MergeError(f"unexpected line before the first top-level op: {line[:60]!r}")
    shared, funcs = [], {}
    for c in chunks:
        m = _FUNC.match(c[0])
        if m:
            funcs[m.group(1)] = "\n".join(c)
        else:
            shared.append("\n".join(c))
    return lines[0], shared, funcs, _resources(lines[end + 1:])


def _resources(tail: list[str]) -> dict[str, str]:
    tail = [t for t in tail if t != ""]
    if not tail:
        return {}
    if tail[:3] != _RES_HEAD or tail[-3:] != _RES_TAIL:
        raise MergeError("unexpected text after the module (only builtin dialect resources are merged)")
    out = {}
    for line in tail[3:-3]:
        m = _RESOURCE.match(line)
        if not m:
            raise MergeError(f"unexpected resource line: {line[:60]!r}")
        out[m.group(1)] = m.group(2)
    return out


def merge_modules(texts: list[str], order: list[str]) -> str:
    """One module holding every function of `texts` in `order` (all of them, each exactly once)."""
    header, shared, funcs, res = _split(texts[0])
    for t in texts[1:]:
        h, s, f, r = _split(t)
        if h != header or s != shared:
            raise MergeError("the parts declare different globals (not exports of the same subgraph)")
        for name in f:
            if name in funcs:
                raise MergeError(f"function {name} is in two parts")
        funcs.update(f)
        for name, blob in r.items():
            if res.setdefault(name, blob) != blob:
                raise MergeError(f"resource {name} differs between the parts")
    if sorted(funcs) != sorted(order):
        raise MergeError(f"the parts hold {sorted(funcs)}, expected {sorted(order)}")
    out = [header, *shared, *(funcs[n] for n in order), "}"]
    if res:
        body = ",\n".join(f"      {n}: {b}" for n, b in res.items())
        out += ["", *_RES_HEAD, body, *_RES_TAIL]
    return "\n".join(out) + "\n"
