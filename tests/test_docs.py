"""The documentation site: strict offline build, internal links, generated references, and runnable snippets.

* ``mkdocs build --strict`` (what ``make docs`` runs) succeeds with every HTTP(S) proxy pointed at a closed port,
  so a build that needed the network would fail here;
* every internal ``href`` / ``src`` of the built site resolves to a file, and every ``#anchor`` to an id on the
  target page; nothing is loaded from another host;
* the CLI page carries the real ``--help`` of every subcommand; the API page documents every public name;
* every code block of the Home, Quickstart and Recipes pages runs: ``python`` blocks with ``exec``, ``bash`` blocks with
  ``bash -euo pipefail`` (the ``pfgdf`` script of this interpreter first on PATH), in a temporary directory.
  Quickstart is one session; each Recipes section (``## ...``) gets a fresh namespace and directory.
"""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# page -> how its blocks share state: "page" (one session) or "section" (one per ## heading)
EXECUTED = {"index.md": "page", "quickstart.md": "page", "recipes.md": "section"}
RUNNABLE = ("python", "bash")
SHOWN_ONLY = ("text",)  # program output; any other language in an executed page is an error
OFFLINE = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}


# ---------------------------------------------------------------- the build


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("NO_PROXY", "ALL_PROXY")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"} | extra


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "--config-file",
           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(**OFFLINE), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return out


def _page_html(site: Path, md: str) -> str:
    rel = Path(md).with_suffix("")
    path = site / "index.html" if str(rel) == "index" else site / rel / "index.html"
    return path.read_text(encoding="utf-8")


def test_strict_build_renders_every_page(site):
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md"))
    assert {"index.md", "quickstart.md", "concepts.md", "recipes.md", "cli.md", "architectures.md",
            "benchmarks.md", "api.md", "faq.md", "changelog.md"} <= set(pages)
    for md in pages:
        assert "<article" in _page_html(site, md), md
    assert "<!-- cli-reference -->" not in _page_html(site, "cli.md")


# ---------------------------------------------------------------- links


class _Links(HTMLParser):
    """Every id / name a page defines, and every href / src it uses."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.urls: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key == "id" or (key == "name" and tag == "a"):
                self.ids.add(value)
            elif key in ("href", "src"):
                self.urls.append((tag, value))


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def _is_external(url: str) -> bool:
    return url.startswith("//") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) is not None


def broken_links(site: Path) -> list[str]:
    """``page: url (why)`` for every internal link of the built site that does not resolve."""
    parsed = {p: _parse(p) for p in site.rglob("*.html")}
    broken = []
    for page, links in parsed.items():
        base = page.parent.relative_to(site).as_posix()
        for _tag, url in links.urls:
            if _is_external(url):
                continue
            parts = urlsplit(url)
            path = unquote(parts.path)
            if not path:
                target = page
            else:
                rel = posixpath.normpath(path.lstrip("/") if path.startswith("/") else posixpath.join(base, path))
                if rel == ".." or rel.startswith("../"):
                    broken.append(f"{page.relative_to(site)}: {url} (outside the site)")
                    continue
                target = site / rel
                if target.is_dir() or path.endswith("/"):
                    target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {url} (no file {target.relative_to(site)})")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if fragment not in ids:
                    broken.append(f"{page.relative_to(site)}: {url} (no id {fragment!r} on the target page)")
    return broken


def test_internal_links_resolve(site):
    assert len(list(site.rglob("*.html"))) >= 10
    assert broken_links(site) == []


def test_link_check_catches_missing_pages_files_and_anchors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text(
        '<h2 id="here">x</h2><a href="a/">ok</a><a href="#here">ok</a><a href="a/#there">ok</a>'
        '<a href="https://example.org/x">external</a><img src="img/missing.png">'
        '<a href="b/">missing page</a><a href="a/#nowhere">missing anchor</a><a href="#gone">missing</a>'
    )
    (tmp_path / "a" / "index.html").write_text('<p id="there"><a href="../index.html#here">ok</a>'
                                               '<a href="../../up.html">outside</a></p>')
    found = broken_links(tmp_path)
    assert len(found) == 5, found
    assert any("img/missing.png" in b for b in found) and any("'nowhere'" in b for b in found)
    assert any("'gone'" in b for b in found) and any("b/" in b for b in found)
    assert any("outside the site" in b for b in found)


def test_site_loads_nothing_from_other_hosts(site):
    """Fonts, scripts, styles and images are all local (theme.font is off); links out are fine."""
    loaded = [(p.relative_to(site), url) for p in site.rglob("*.html")
              for tag, url in _parse(p).urls if tag in ("script", "img", "link", "source") and _is_external(url)
              and not (tag == "link" and "canonical" in url)]
    assert loaded == []


# ---------------------------------------------------------------- generated references


def test_cli_reference_is_the_real_help(site):
    subcommand_parsers = _hook("cli_reference").subcommand_parsers
    from pfgdf_plugin.cli import COMMANDS, build_parser

    html = _page_html(site, "cli.md")
    parser = build_parser()
    subs = subcommand_parsers(parser)
    assert list(subs) == list(COMMANDS)
    for name, sub in subs.items():
        assert f'id="pfgdf-{name}"' in html, name
        assert f"usage: pfgdf {name}" in html, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in html, f"pfgdf {name} {option} missing from the CLI page"


def _hook(name: str):
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_optional_pages_join_the_nav_only_when_present(tmp_path):
    add = _hook("optional_pages").add_optional_pages
    nav = [{"Home": "index.md"}, {"Concepts": [{"Overview": "concepts.md"}, {"PFGDF": "pfgdf.md"}]},
           {"Recipes": "recipes.md"}, {"CLI reference": "cli.md"}]
    assert add(nav, tmp_path) == [] and len(nav) == 4
    (tmp_path / "chip.md").write_text("# CHIP")
    (tmp_path / "deployment.md").write_text("# Deployment")
    assert add(nav, tmp_path) == ["chip.md", "deployment.md"]
    assert nav[1]["Concepts"] == [{"Overview": "concepts.md"}, {"PFGDF": "pfgdf.md"}, {"CHIP": "chip.md"}]
    assert nav[3] == {"Deployment": "deployment.md"} and nav[2] == {"Recipes": "recipes.md"}
    assert add(nav, tmp_path) == [], "a page already in the nav is not added twice"


def test_api_reference_documents_every_public_name(site):
    import pfgdf_plugin

    html = _page_html(site, "api.md")
    missing = [n for n in pfgdf_plugin.__all__ if n != "__version__" and f'id="pfgdf_plugin.{n}"' not in html]
    assert missing == []


def test_api_examples_render_as_code_without_raw_roles(site):
    """Docstring examples are highlighted code blocks, not blockquotes of run-together text; no Sphinx roles."""
    html = _page_html(site, "api.md")
    assert re.findall(r":(?:meth|class|func|attr|mod):`", html) == []
    assert "<blockquote>" not in html and "<p>&gt;&gt;&gt;" not in html
    prompts = html.count('<span class="gp">&gt;&gt;&gt; </span>')
    assert prompts >= 50, prompts  # every public function's examples, as highlighted Python sessions


# ---------------------------------------------------------------- layout

# About 80 monospace characters fit a code block at a 1280 px window with both sidebars shown (measured in
# headless Chromium); longer lines are cut at the block's edge and need a horizontal scroll.
CODE_WIDTH = 80
WRAPPED_PAGES = ("recipes.md", "deployment.md", "benchmarks.md", "criteria.md", "latency.md")


@pytest.mark.parametrize("page", WRAPPED_PAGES)
def test_code_lines_fit_the_content_width(page):
    """Commands and code on these pages fit the block (program output, in ``text`` blocks, may scroll)."""
    long = [f"{page}:{line + i}: {len(text)} characters" for line, lang, code in
            code_blocks((DOCS / page).read_text(encoding="utf-8"))
            for i, text in enumerate(code.splitlines()) if len(text) > CODE_WIDTH and not _is_output(lang, code)]
    assert long == []


def _is_output(lang: str, code: str) -> bool:
    """A ``text`` block that is a program's printed output rather than commands to type."""
    first = code.lstrip().split(maxsplit=1)[0] if code.strip() else ""
    return lang == "text" and first not in ("pfgdf", "python", "make", "cd", "./build.sh", "#")


def test_wide_tables_scroll_and_keep_names_whole(site):
    """extra.css is on every page: table cells never break a name or a number, long tables scroll in a box."""
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    rules = {m.group(1).strip(): m.group(2) for m in re.finditer(r"([^{}]+)\{([^}]*)\}", re.sub(r"/\*.*?\*/", "", css,
                                                                                              flags=re.S))}
    code_cell = next(body for sel, body in rules.items() if "table:not([class]) code" in sel)
    assert "white-space: nowrap" in code_cell and "word-break: normal" in code_cell
    scroll = rules[".md-typeset__scrollwrap"]
    assert "overflow: auto" in scroll and "max-height" in scroll
    assert "position: sticky" in next(body for sel, body in rules.items() if "thead th" in sel)
    pages = sorted(site.rglob("index.html"))
    assert pages and all('stylesheets/extra.css"' in p.read_text(encoding="utf-8") for p in pages)


# ---------------------------------------------------------------- runnable snippets


def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line of the first code line, language, code)`` for every fenced block, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, lang, start = opening.group(1), opening.group(2).lower(), i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        blocks.append((start + 1, lang, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


def _units() -> list[tuple[str, str, list[tuple[int, str, str]]]]:
    """(page, section title, its blocks): the units that share one namespace and one directory."""
    units = []
    for page, scope in EXECUTED.items():
        text = (DOCS / page).read_text(encoding="utf-8")
        if scope == "page":
            units.append((page, "whole page", code_blocks(text)))
            continue
        heads = [(m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, flags=re.M)]
        for (pos, title), nxt in zip(heads, [*heads[1:], (len(text), "")], strict=True):
            offset = text.count("\n", 0, pos)
            blocks = [(line + offset, lang, code) for line, lang, code in code_blocks(text[pos:nxt[0]])]
            units.append((page, title, blocks))
    return units


UNITS = _units()


def test_executed_pages_have_code_and_only_known_block_types():
    for page in EXECUTED:
        blocks = code_blocks((DOCS / page).read_text(encoding="utf-8"))
        assert sum(lang == "python" for _, lang, _ in blocks) >= (3 if page != "index.md" else 1), page
        assert {lang for _, lang, _ in blocks} <= {*RUNNABLE, *SHOWN_ONLY}, page


def test_block_extraction():
    text = "x\n```python\na = 1\n\nb = 2\n```\n```text\nout\n```\n````bash\n```\nls\n````\n"
    assert code_blocks(text) == [(3, "python", "a = 1\n\nb = 2\n"), (8, "text", "out\n"), (11, "bash", "```\nls\n")]


@pytest.mark.parametrize("page, section, blocks", UNITS, ids=[f"{p}:{s}" for p, s, _ in UNITS])
def test_snippets_run(page, section, blocks, tmp_path, monkeypatch):
    runnable = [b for b in blocks if b[1] in RUNNABLE]
    if not runnable:
        pytest.skip(f"{page} '{section}' has no code")
    monkeypatch.chdir(tmp_path)
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    namespace: dict = {"__name__": "__docs__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like OMP_NUM_THREADS=1 for the shell blocks: the test runs on busy shared cores
    try:
        for line, lang, code in runnable:
            where = f"{page}:{line} ({section})"
            if lang == "python":
                # Leading newlines make traceback line numbers those of the Markdown file.
                exec(compile("\n" * (line - 1) + code, str(DOCS / page), "exec"), namespace)
            else:
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout[-2000:]}\n" \
                                             f"{done.stderr[-3000:]}"
    finally:
        torch.set_num_threads(threads)
