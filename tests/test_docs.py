"""The README and the manual hold together: every relative link names a file in the repository, and every
#anchor a heading of the page it points to (as GitHub makes anchors from headings)."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    found, in_code = set(), False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                found.add(slug(line.lstrip("#")))
    return found


def test_slug_matches_githubs_rule():
    assert slug("Two decoders and the corrector: the test split") == "two-decoders-and-the-corrector-the-test-split"
    assert slug("The previous default (commits `f1f5c1d` to `3d03d02`: AdamW)") == \
        "the-previous-default-commits-f1f5c1d-to-3d03d02-adamw"


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page):
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
        if not os.path.exists(full):
            broken.append(f"{target}: no such file")
        elif anchor and full.endswith(".md") and anchor not in anchors(full):
            broken.append(f"{target}: no heading makes #{anchor}")
    assert not broken, f"{page} has broken links:\n" + "\n".join(broken)
