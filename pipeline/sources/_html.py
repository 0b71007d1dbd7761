"""HTML -> plain text with the standard library's ``html.parser`` (no third-party parser).

Paragraph-like elements become blank-line separated blocks, list items and table rows become
lines, ``<pre>`` keeps its whitespace, everything else has its whitespace collapsed. ``<script>``,
``<style>``, ``<head>`` and elements carrying one of the ``skip_classes`` are dropped whole.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
_PARAGRAPH = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "blockquote", "dl", "ul", "ol",
              "section", "article", "header", "footer", "figure", "hr", "address", "form", "fieldset"}
_LINE = {"br", "li", "tr", "dt", "dd", "caption", "thead", "tbody"}
_CELL = {"td", "th"}
_SKIP_TAGS = {"script", "style", "head", "noscript", "template"}
_WS = re.compile(r"\s+")
_MANY_NL = re.compile(r"\n{3,}")


class _ToText(HTMLParser):
    def __init__(self, skip_classes: frozenset[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_classes = skip_classes
        self.parts: list[str] = []
        self.skip = 0  # depth inside a dropped element
        self.pre = 0
        self.at_line_start = True

    def _newline(self, n: int) -> None:
        if self.parts and self.parts[-1] == "- ":  # a list item's bullet: its first block stays on its line
            return
        # trim the spaces that end the current line, then add up to n newlines
        while self.parts and self.parts[-1].endswith(" ") and not self.pre:
            self.parts[-1] = self.parts[-1].rstrip(" ")
        have = 0
        for p in reversed(self.parts):
            stripped = p.rstrip("\n")
            have += len(p) - len(stripped)
            if stripped:
                break
        if self.parts and have < n:
            self.parts.append("\n" * (n - have))
        self.at_line_start = True

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.skip:
            if tag not in _VOID:
                self.skip += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in _SKIP_TAGS or classes & self.skip_classes:
            if tag not in _VOID:
                self.skip = 1
            return
        if tag == "pre":
            self.pre += 1
        if tag in _PARAGRAPH:
            self._newline(2)
        elif tag in _LINE:
            self._newline(1)
            if tag == "li":
                self.parts.append("- ")
                self.at_line_start = False
        elif tag in _CELL and not self.at_line_start:
            self.parts.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if self.skip:
            self.skip -= 1
            return
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in _PARAGRAPH:
            self._newline(2)
        elif tag in _LINE:
            self._newline(1)

    def handle_data(self, data: str) -> None:
        if self.skip or not data:
            return
        if self.pre:
            self.parts.append(data)
            self.at_line_start = data.endswith("\n")
            return
        text = _WS.sub(" ", data)
        if self.at_line_start:
            text = text.lstrip(" ")
        if text:
            self.parts.append(text)
            self.at_line_start = False


def html_to_text(html: str, skip_classes: frozenset[str] | set[str] = frozenset()) -> str:
    parser = _ToText(frozenset(skip_classes))
    parser.feed(html)
    parser.close()
    return _MANY_NL.sub("\n\n", "".join(parser.parts)).strip()


def html_title(html: str) -> str:
    m = re.search(r"<title[^>]*>(.*?)</title>", html, re.S | re.I)
    return _WS.sub(" ", m.group(1)).strip() if m else ""
