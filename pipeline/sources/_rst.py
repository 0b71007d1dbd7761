"""Light reStructuredText -> plain text: keeps the prose and code, drops the markup.

Not a full parser (docutils would need the Sphinx extensions of each project); it rewrites the
constructs that dominate Sphinx sources:

* roles ``:func:`os.path.join``` -> ``os.path.join``, ``:func:`~os.path.join``` -> ``join``; ``:ref:`Title <label>``` -> ``Title``
* inline literals ````x```` -> ``x``; links ```text <url>`_`` -> ``text``; ``**bold**`` -> ``bold``
* section adornment lines (``=====``) are dropped
* ``.. index::``, ``.. _label:``, comments, ``.. highlight::`` and similar directives are dropped
  together with their indented options; other directives keep their argument
  (``.. function:: open(file)`` -> ``open(file)``) and admonitions become ``Note:`` etc.
"""

from __future__ import annotations

import re

_DROP_DIRECTIVES = {
    "index", "highlight", "highlightlang", "sectionauthor", "moduleauthor", "toctree", "only", "raw",
    "include", "literalinclude", "image", "figure", "testsetup", "testcleanup", "tabularcolumns",
    "contents", "currentmodule", "default-role", "role", "csv-table", "kernel-doc", "kernel-include",
    "kernel-feat", "kernel-abi", "maintainers-include", "cssclass", "program", "opcode", "audit-event",
    "impl-detail", "c:namespace", "c:namespace-push", "c:namespace-pop", "code-block", "rst-class",
    "SPDX-License-Identifier", "meta", "autosummary", "py:currentmodule", "productionlist",
}
_TITLE_DIRECTIVES = {
    "note": "Note:", "warning": "Warning:", "seealso": "See also:", "caution": "Caution:",
    "important": "Important:", "tip": "Tip:", "hint": "Hint:", "attention": "Attention:",
    "danger": "Danger:", "error": "Error:", "todo": "To do:",
}
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::\s*(.*)$")
_COMMENT_OR_TARGET = re.compile(r"^(\s*)\.\.(\s.*)?$")
_OPTION = re.compile(r"^\s+:[\w -]+:(\s.*)?$")
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")
_RFC_PEP = re.compile(r":(rfc|pep):`([^`<]*?)\s*(?:<[^`>]*>)?`", re.I)
_ROLE_TITLE = re.compile(r":[\w:.-]+:`([^`<]*?)\s*<[^`>]*>`")
_ROLE = re.compile(r":[\w:.-]+:`!?(~?)([^`]*)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?")
_REF = re.compile(r"`([^`]+)`_{1,2}")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_FOOTNOTE = re.compile(r"\s*\[#[\w-]*\]_")
_SUBST = re.compile(r"\|(\w[\w -]*)\|_?")


def rst_to_text(src: str) -> str:
    out: list[str] = []
    lines = src.splitlines()
    skip_indent: int | None = None  # inside a dropped directive or comment: skip deeper-indented lines
    in_options = False
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if in_options:
            if _OPTION.match(line):
                continue
            in_options = False
        if m := _DIRECTIVE.match(line):
            name, arg = m.group(2), m.group(3).strip()
            if name in _DROP_DIRECTIVES:
                skip_indent = indent
                continue
            in_options = True
            title = _TITLE_DIRECTIVES.get(name)
            if title:
                line = m.group(1) + (f"{title} {arg}" if arg else title)
            elif name in ("versionadded", "versionchanged", "deprecated", "deprecated-removed"):
                word = {"versionadded": "Added", "versionchanged": "Changed", "deprecated": "Deprecated",
                        "deprecated-removed": "Deprecated"}[name]
                line = m.group(1) + f"{word} in version {arg}" if arg else ""
            elif arg:
                line = m.group(1) + arg
            else:
                continue
        elif _COMMENT_OR_TARGET.match(line):
            skip_indent = indent
            continue
        elif _ADORNMENT.match(line) and len(stripped) >= 3:
            continue
        out.append(line)
    return inline_to_text("\n".join(out))


def inline_to_text(text: str) -> str:
    """Rewrite the inline markup of a whole text (one pass per construct, not per line)."""
    if "`" in text:
        text = _RFC_PEP.sub(lambda m: f"{m.group(1).upper()} {m.group(2)}" if m.group(2)[:1].isdigit() else m.group(2), text)
        text = _ROLE_TITLE.sub(r"\1", text)
        text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
        text = _LINK.sub(r"\1", text)
        text = _REF.sub(r"\1", text)
        text = _LITERAL.sub(r"\1", text)
    if "**" in text:
        text = _STRONG.sub(r"\1", text)
    if "[#" in text:
        text = _FOOTNOTE.sub("", text)
    if "|" in text:
        text = _SUBST.sub(r"\1", text)
    return text
