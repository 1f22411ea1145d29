"""The reference pages in ``docs/`` stay true where that is cheap to check.

Code comments cite these pages instead of notes a user of the repository cannot
open, so a page must name what the code has: every Redis key of ``Keys`` and
every event type (``docs/redis.md``), every job status and failure reason
(``docs/statuses.md``), every route of the HTTP app (``docs/api.md``). Each
check also runs the other way where a page lists things in a table or a
heading, so a removed key, reason or endpoint cannot linger in the docs. Links
between the pages (and to the README) must resolve, anchors included, and so
must every page and heading the code cites; the code, tests, benchmarks and
scripts cite no note or issue a reader of the repository cannot open.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from deployster import events
from deployster.keys import Keys
from deployster.models import JobStatus, Reason
from deployster.server.app import create_app
from deployster.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PACKAGE = REPO / "deployster"


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of that level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def table_names(text: str) -> set[str]:
    """The backticked names that open a table row: ``| `name` |``."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.M))


# ------------------------------------------------------------------ Redis keys


def documented_key_patterns() -> dict[str, str]:
    """Every key ``Keys`` builds (its name -> a regex for the docs), with a
    placeholder such as ``<project>`` wherever a method takes an argument."""
    keys = Keys()
    sentinel = "\x00"
    patterns = {}
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name == "namespace":
            continue
        if isinstance(member, property):
            value = getattr(keys, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            value = member(keys, *([sentinel] * len(params)))
        else:
            continue
        body = re.escape(value).replace(re.escape(sentinel), "<[a-z_]+>")
        # A prefix appears inside the keys built on it; a key is named in full.
        patterns[name] = body if name.endswith("prefix") else f"`{body}`"
    return patterns


def test_every_redis_key_is_in_the_redis_page() -> None:
    text = page("redis.md")
    patterns = documented_key_patterns()
    assert {"lock", "job", "log", "queue", "events"} <= set(patterns)  # the walk works
    missing = [name for name, pattern in patterns.items() if not re.search(pattern, text)]
    assert missing == [], f"Keys members docs/redis.md does not name: {missing}"


def test_the_redis_page_names_no_key_that_keys_does_not_build() -> None:
    text = section(page("redis.md"), "Keys")
    patterns = [p.strip("`") for name, p in documented_key_patterns().items()
                if not name.endswith("prefix")]
    unknown = [key for key in table_names(text)
               if not any(re.fullmatch(p, key) for p in patterns)]
    assert unknown == [], f"keys in docs/redis.md that Keys does not build: {unknown}"


# ------------------------------------------------------------------ events


def event_types() -> set[str]:
    """Every event type: the constants of ``events.py`` and the types published
    by hand (``json.dumps({"type": ...})``) or from a Lua script
    (``publish('...')``), wherever the scripts live."""
    found = {value for name, value in vars(events).items()
             if name.isupper() and isinstance(value, str)}
    published = re.compile(r"""json\.dumps\(\{"type": "(\w+)"|\bpublish\('(\w+)'""")
    for path in PACKAGE.rglob("*"):
        if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts:
            for match in published.finditer(path.read_text(encoding="utf-8")):
                found.add(match.group(1) or match.group(2))
    return found


def test_every_event_type_is_in_the_events_table() -> None:
    kinds = event_types()
    assert {"finished", "released", "cancel", "projects"} <= kinds  # the scan works
    table = table_names(section(page("redis.md"), "Events"))
    assert sorted(kinds - table) == [], "event types docs/redis.md does not describe"
    assert sorted(table - kinds) == [], "event types in docs/redis.md that nothing publishes"


# ------------------------------------------------------------------ statuses


def test_every_status_and_reason_has_a_row_in_the_statuses_page() -> None:
    text = page("statuses.md")
    statuses = table_names(section(text, "Statuses"))
    reasons = table_names(section(text, "Failure reasons"))
    assert statuses == {s.value for s in JobStatus}
    assert reasons == {r.value for r in Reason}


# ------------------------------------------------------------------ routes


def app_routes() -> set[str]:
    """``METHOD /path`` of every route the app serves (Quart's default static
    route aside: the package has no static folder, it answers 404 JSON)."""
    app = create_app(Settings())
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.add(f"{method} {rule.rule}")
    return routes


def test_every_route_has_a_section_in_the_api_page() -> None:
    headings = [line for line in page("api.md").splitlines() if line.startswith("#")]
    routes = app_routes()
    assert "POST /deploy" in routes and "GET /openapi.json" in routes  # the walk works
    missing = [route for route in sorted(routes)
               if not any(re.search(rf"`{re.escape(route)}[`?]", h) for h in headings)]
    assert missing == [], f"routes without a heading in docs/api.md: {missing}"
    documented = {m.group(1) for h in headings
                  for m in re.finditer(r"`((?:GET|POST|PUT|PATCH|DELETE) /[^`?]*)", h)}
    assert sorted(documented - routes) == [], "endpoints in docs/api.md the app does not serve"


# ------------------------------------------------------------------ links


def slugs(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings (code blocks skipped)."""
    found: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_links_between_the_pages_resolve() -> None:
    broken = []
    for doc in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # an outside address
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and \
                    anchor not in slugs(path.read_text(encoding="utf-8")):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert broken == []


def test_the_pages_cite_nothing_a_reader_cannot_open() -> None:
    cited = [f"{doc.name}: {m.group()}" for doc in sorted(DOCS.glob("*.md"))
             for m in re.finditer(r"SPEC|[Ii]ssue #?\d+", doc.read_text(encoding="utf-8"))]
    assert cited == []


# ------------------------------------------------------- citations in the code

# Where code, tests, benchmarks and scripts live; a citation in them names a
# file from the repository's root ("docs/api.md#error-codes", "README.md#projects").
CODE = [REPO / name for name in ("deployster", "tests", "bench", "scripts")]
CODE_SUFFIXES = {".py", ".lua", ".tcss", ".sh"}
UNOPENABLE = re.compile(r"\bSPEC\b|\bSTYLE\b|[Ii]ssues? #?\d+")
# Citations left in files that a concurrent change owns; they go with it.
PENDING: set[tuple[str, str]] = set()


def code_files() -> list[Path]:
    here = Path(__file__).resolve()  # this file spells the patterns it looks for
    return sorted(path for root in CODE for path in root.rglob("*")
                  if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts
                  and path.resolve() != here)


def test_the_code_cites_nothing_a_reader_cannot_open() -> None:
    """Comments and docstrings cite a docs/ page, the README or the test that
    holds a rule: never the product notes ("SPEC §4") or an issue number."""
    files = code_files()
    assert REPO / "deployster" / "service.py" in files  # the walk works
    cited = {(str(path.relative_to(REPO)), m.group()) for path in files
             for m in UNOPENABLE.finditer(path.read_text(encoding="utf-8"))}
    assert sorted(cited - PENDING) == []


def test_the_code_cites_pages_and_headings_that_exist() -> None:
    citation = re.compile(r"(?<![\w./-])((?:docs/[\w-]+|README)\.md)(?:#([\w-]+))?")
    found, broken = 0, []
    for path in code_files():
        for m in citation.finditer(path.read_text(encoding="utf-8")):
            found += 1
            target, anchor = REPO / m.group(1), m.group(2)
            where = f"{path.relative_to(REPO)}: {m.group()}"
            if not target.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and anchor not in slugs(target.read_text(encoding="utf-8")):
                broken.append(f"{where} (no such heading)")
    assert found > 10  # the code does cite the pages
    assert broken == []
