"""The Perl 5 manual: the POD pages of Debian's perl-doc (``usr/share/perl/5.*/pod/*.pod``: perlfunc,
perlre, perlfaq, the perldelta pages, ...) rendered to text by Pod::Text, the module behind
``pod2text``.

One ``perl`` process renders a whole batch of pages (a process per page would cost ~0.1 s each);
the pages are split into two batches rendered in parallel. ``perltoc`` (a generated table of
contents of the other pages) is left out. Id: the page name (``perlfunc``).
Sub-label: none (``""``).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, SourceError
from pipeline.sources.fetch import walk_files

log = logging.getLogger(__name__)

PACKAGE = "perl-doc"
TIMEOUT = 600

# prints, for each file: NUL, file name, NUL, rendered text (UTF-8)
_SCRIPT = r"""
use strict; use warnings; use Pod::Text;
binmode STDOUT;
for my $f (@ARGV) {
    my $out = '';
    my $p = Pod::Text->new(width => 78, utf8 => 1, errors => 'none');
    $p->output_string(\$out);
    $p->parse_file($f);
    utf8::encode($out) if utf8::is_utf8($out);
    print "\0$f\0$out";
}
"""


def render_pods(paths: list[Path], jobs: int = 2) -> dict[str, str]:
    """Render POD files to text with Pod::Text in ``jobs`` parallel perl processes."""
    if not paths:
        return {}
    # largest files first, each to the batch with the fewest bytes so far: the batches finish together
    batches: list[list[Path]] = [[] for _ in range(max(1, min(jobs, len(paths))))]
    load = [0] * len(batches)
    for p in sorted(paths, key=lambda p: (-p.stat().st_size, p.name)):
        i = load.index(min(load))
        batches[i].append(p)
        load[i] += p.stat().st_size
    procs = []
    try:
        for batch in batches:
            procs.append(subprocess.Popen(["perl", "-e", _SCRIPT, *map(str, batch)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    except FileNotFoundError:
        raise SourceError("docs_perl needs perl with Pod::Text (it comes with Debian's perl); "
                          "install it with apt-get install perl") from None
    out: dict[str, str] = {}
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise SourceError(f"docs_perl: rendering POD with perl took over {TIMEOUT} s") from None
        if proc.returncode != 0:
            raise SourceError(f"docs_perl: perl Pod::Text failed (exit {proc.returncode}): "
                              f"{stderr.decode(errors='replace')[-400:].strip()}; check that perl's Pod::Text works "
                              f"(pod2text --help)")
        chunks = stdout.split(b"\0")
        for name, text in zip(chunks[1::2], chunks[2::2]):
            out[os.fsdecode(name)] = text.decode("utf-8", errors="replace")
    return out


class DocsPerl(Source):
    domain = "docs_perl"
    packages = (PackageSpec("apt", PACKAGE),)

    def parse(self, cache: Path) -> Iterator[Document]:
        perl_dir = self.need(self.root(cache, PACKAGE) / "usr" / "share" / "perl", PACKAGE)
        # perltoc is a generated table of contents of all the other pages: left out
        pods = [p for p in walk_files(perl_dir, ".pod") if p.parent.name == "pod" and p.stem != "perltoc"]
        if not pods:
            raise self.bad(perl_dir, PACKAGE, "no pod/*.pod files under it")
        rendered = render_pods(pods)
        for path in pods:
            text = rendered.get(str(path))
            if text is None:
                raise self.bad(path, PACKAGE, "perl rendered no text for it")
            yield self.doc(path.stem, text)
