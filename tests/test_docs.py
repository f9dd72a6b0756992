"""The README stays one screen, and every link in it, in docs/ and in the notebooks' text resolves: the
file exists, and a `#fragment` names a heading of that file (GitHub's anchors)."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def markdown_sources() -> dict[Path, str]:
    """Each markdown file, and each notebook's markdown cells (keyed by the notebook's path)."""
    sources = {p: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        sources[nb] = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return sources


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen, result = {}, set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6} (.+)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower().replace("`", "")).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            result.add(slug if n == 0 else f"{slug}-{n}")
    return result


def links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not links
    return [next(g for g in m.groups() if g) for m in LINK.finditer(text)]


def broken_links(path: Path, text: str) -> list[str]:
    broken = []
    for target in links(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not reachable from here, and not ours
            continue
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved.read_text()):
            broken.append(f"{target} (no heading #{fragment})")
    return broken


def test_the_link_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` here, too\n")
    text = "[ok](a.md) [ok](a.md#some-code-here-too) [bad](b.md) [bad](a.md#nope) [web](https://x.org/y)"
    assert broken_links(tmp_path / "index.md", text) == ["b.md (no such file)", "a.md#nope (no heading #nope)"]
    assert links("```\n[no](x.md)\n```\n![img](pic.png)") == ["pic.png"]


@pytest.mark.parametrize("path", list(markdown_sources()), ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(path):
    text = markdown_sources()[path]
    assert broken_links(path, text) == []


def test_readme_is_one_screen_and_points_at_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) < 8 * 1024
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"
    for command in ("make run", "make test", "make lab"):
        assert command in readme
