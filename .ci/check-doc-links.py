#!/usr/bin/env python3
"""Checks that every relative link in the documents resolves.

Reads README.md, ARCHITECTURE.md, docs/*.md, guest-sdk/**/README.md and
bench/peers/README.md. A link to a file or folder must name one that exists;
a `#anchor` (alone or after a Markdown file) must name a heading of that file,
spelled as GitHub spells heading anchors. External links (http:, https:,
mailto:) are not checked. Exits 1 and lists every broken link otherwise.
Run from anywhere: python3 .ci/check-doc-links.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!\!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def documents():
    names = ["README.md", "ARCHITECTURE.md", "bench/peers/README.md"]
    files = [ROOT / n for n in names]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "guest-sdk").glob("**/README.md"))
    return [f for f in files if f.is_file() and "node_modules" not in f.parts]


def prose_lines(text):
    """The lines outside fenced code blocks, with inline code removed."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", "", line)


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # drops punctuation and backquotes
    return text.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        found = set()
        counts = {}
        fenced = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if FENCE.match(line):
                fenced = not fenced
                continue
            m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if m and not fenced:
                base = slug(m.group(2))
                n = counts.get(base, 0)
                counts[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def main():
    broken = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        for line in prose_lines(text):
            for m in LINK.finditer(line):
                target = m.group(1) or m.group(2)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (doc.parent / file_part).resolve() if file_part else doc
                where = doc.relative_to(ROOT)
                if not dest.exists():
                    broken.append(f"{where}: {target}: no such file")
                    continue
                if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{where}: {target}: no heading #{anchor}")
    for b in broken:
        print(b)
    if broken:
        print(f"{len(broken)} broken link(s)", file=sys.stderr)
        return 1
    print(f"links ok in {len(documents())} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
