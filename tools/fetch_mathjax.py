"""Fetch MathJax for the documentation site, so that the maths renders offline.

`make docs` runs this before `mkdocs build`: it downloads one pinned MathJax release from
the npm registry, checks its SHA-256, and unpacks the CHTML component (`tex-mml-chtml.js`),
its web fonts and its licence into `docs/javascripts/mathjax/` (not versioned; MathJax is
Apache-2.0). The site then serves MathJax itself instead of loading it from a CDN.

Usage: `python tools/fetch_mathjax.py [--force]`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{VERSION}.tgz"
SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
DEST = Path(__file__).resolve().parent.parent / "docs" / "javascripts" / "mathjax"
#: what the site needs, relative to the package's `es5/` folder (MathJax finds its fonts
#: relative to the script: `[mathjax]/output/chtml/fonts/woff-v2`)
WANTED = ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="fetch again even if present")
    args = ap.parse_args(argv)
    marker = DEST / f".version-{VERSION}"
    if marker.exists() and not args.force:
        return 0
    with urllib.request.urlopen(URL, timeout=60) as response:  # a fixed https URL
        blob = response.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SHA256:
        print(
            f"fetch_mathjax: {URL} has SHA-256 {digest}, expected {SHA256}; not unpacked.",
            file=sys.stderr,
        )
        return 1
    DEST.mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if name == "package/LICENSE":
                rel = "LICENSE"
            elif name.startswith("package/es5/") and member.isfile():
                rel = name.removeprefix("package/es5/")
                if not any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in WANTED):
                    continue
            else:
                continue
            source = tar.extractfile(member)
            if source is None or ".." in Path(rel).parts:
                continue
            target = DEST / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())
            n += 1
    marker.write_text(f"MathJax {VERSION} from {URL}, sha256 {SHA256}\n")
    print(f"fetch_mathjax: MathJax {VERSION}: {n} files in {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
