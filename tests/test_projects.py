"""Projects (README.md#projects): one project per directory however it is spelled, pipeline
stages checked on entry, and self-registration only under the allowed roots."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deployster import store
from deployster.errors import Conflict, InvalidRequest, UnknownProject
from deployster.models import EnvVar, Stage
from deployster.projects import normalise_path, real_path, validate_pipeline
from deployster.service import Deployster
from deployster.settings import Settings

# ------------------------------------------------------------ normalise_path


def test_spellings_of_one_path_normalise_to_one(tmp_path: Path) -> None:
    real = tmp_path / "apps" / "web"
    real.mkdir(parents=True)
    expected = str(real)

    spellings = [
        str(real),
        f"{real}/",
        f"{real}//",
        f"{real}/../web",
        f"{tmp_path}/apps/./web/",
        f"/{real}",  # a leading "//" is "/" on Linux
        f"  {real}  ",
    ]
    assert {normalise_path(s) for s in spellings} == {expected}
    assert not expected.endswith("/")
    assert normalise_path("/") == "/"
    assert normalise_path("//") == "/"


def test_a_symlink_keeps_its_own_spelling(tmp_path: Path) -> None:
    """Matching by the path as sent is what keeps a Capistrano-style ``current``
    one project while it moves between releases: no resolution here."""
    real = tmp_path / "releases" / "1"
    real.mkdir(parents=True)
    current = tmp_path / "current"
    current.symlink_to(real, target_is_directory=True)
    assert normalise_path(f"{current}/") == str(current)
    assert real_path(str(current)) == os.path.realpath(real)


@pytest.mark.parametrize("bad", ["apps/web", "./web", "web", "", "   ", "/srv/a\x00b"])
def test_relative_empty_or_nul_paths_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        normalise_path(bad)
    assert err.value.code == "invalid_cd"
    assert "'cd'" in err.value.message


def test_relative_path_error_names_the_path() -> None:
    with pytest.raises(InvalidRequest, match=r"absolute path.*'apps/web'"):
        normalise_path("apps/web")


# --------------------------------------------------------- validate_pipeline


def stage(*variables: dict[str, object], branch: str = "main",
          name: str = "Production") -> dict[str, object]:
    return {"stage_name": name, "git_branch": branch, "environment_variables": list(variables)}


def test_a_valid_pipeline_parses_into_stages() -> None:
    raw = [
        stage({"key": "API_URL", "value": "https://api.example.com/?a=1&b='x'"},
              {"key": "_private2", "value": ""}),
        stage(branch="develop", name="Staging"),
    ]
    assert validate_pipeline(raw) == (
        Stage("Production", "main", (EnvVar("API_URL", "https://api.example.com/?a=1&b='x'"),
                                     EnvVar("_private2", ""))),
        Stage("Staging", "develop", ()),
    )
    # A JSON string is accepted too (what a file or a form field holds).
    assert validate_pipeline(json.dumps(raw)) == validate_pipeline(raw)
    assert validate_pipeline([]) == ()


def test_upper_case_key_value_are_aliases() -> None:
    stages = validate_pipeline([stage({"KEY": "TOKEN", "VALUE": "s3cret"},
                                      {"key": "MODE", "VALUE": "prod"})])
    assert stages[0].environment_variables == (EnvVar("TOKEN", "s3cret"), EnvVar("MODE", "prod"))
    # Stored back in the canonical spelling.
    assert stages[0].to_dict()["environment_variables"][0] == {"key": "TOKEN", "value": "s3cret"}


def test_numbers_become_strings() -> None:
    stages = validate_pipeline([stage({"key": "PORT", "value": 8080})])
    assert stages[0].environment_variables == (EnvVar("PORT", "8080"),)


@pytest.mark.parametrize(
    "key", ["1ABC", "API-URL", "API URL", "", "A=B", "X\nY", "API_URL\n", "ÄPI", 5, None]
)
def test_keys_must_be_identifiers(key: object) -> None:
    with pytest.raises(InvalidRequest, match="is not an identifier") as err:
        validate_pipeline([stage({"key": key, "value": "v"})])
    assert err.value.code == "invalid_pipeline"


@pytest.mark.parametrize("value", ["a\nb", "line\r", "nul\x00", "\nINJECTED=1"])
def test_values_with_newline_cr_or_nul_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_pipeline([stage({"key": "API_URL", "value": value})])
    assert err.value.code == "invalid_pipeline"
    assert err.value.message == (
        "stage 'Production': value of API_URL contains a newline, carriage return or NUL, "
        "which .env cannot hold safely"
    )


@pytest.mark.parametrize("value", [None, True, ["x"], {"a": 1}])
def test_values_must_be_strings(value: object) -> None:
    with pytest.raises(InvalidRequest, match="value of API_URL must be a string"):
        validate_pipeline([stage({"key": "API_URL", "value": value})])


def test_duplicate_branches_are_refused() -> None:
    raw = [stage(name="Production"), stage(name="Also production")]
    with pytest.raises(InvalidRequest,
                       match="stage 'Also production': another stage already uses branch 'main'"):
        validate_pipeline(raw)


def test_duplicate_keys_are_refused_in_either_spelling() -> None:
    raw = [stage({"key": "API_URL", "value": "a"}, {"KEY": "API_URL", "VALUE": "b"})]
    with pytest.raises(InvalidRequest, match="variable API_URL is set twice"):
        validate_pipeline(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stage_name": "Production", "git_branch": "main"}, "must be a JSON list of stages"),
        ('{"stage_name": "Production"}', "must be a JSON list of stages"),
        ("not json", "pipeline is not valid JSON"),
        (42, "must be a JSON list of stages"),
        (["Production"], "stage 1 must be an object"),
        ([{"git_branch": "main"}], "'stage_name' must be a non-empty string"),
        ([{"stage_name": "P", "git_branch": " "}], "'git_branch' must be a non-empty string"),
        ([{"stage_name": "P", "git_branch": "main", "environment_variables": {"A": "1"}}],
         "'environment_variables' must be a list"),
        ([{"stage_name": "P", "git_branch": "main", "environment_variables": ["API_URL=x"]}],
         "each variable must be an object"),
    ],
)
def test_malformed_pipelines_are_refused_with_the_problem(raw: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        validate_pipeline(raw)
    assert err.value.code == "invalid_pipeline"


# ------------------------------------------------------------- registry.add


async def test_add_names_the_project_after_its_directory(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(f"{project_dir}/")
    assert project.name == "my-app"
    assert project.path == str(project_dir)
    assert project.lock_ttl == core.settings.default_lock_ttl
    assert project.timeout == core.settings.default_timeout
    assert project.pipeline == ()
    assert await store.select_project_by_name(core.db, "my-app") == project


async def test_add_makes_the_directory_name_safe(core: Deployster, tmp_path: Path) -> None:
    odd = tmp_path / "My App (beta)!"
    odd.mkdir()
    assert (await core.projects.add(str(odd))).name == "My-App-beta"
    dots = tmp_path / "..."
    dots.mkdir()
    assert (await core.projects.add(str(dots))).name == "project"


async def test_add_stores_pipeline_ttl_and_timeout(core: Deployster, project_dir: Path) -> None:
    pipeline = [stage({"KEY": "API_URL", "VALUE": "https://api"})]
    project = await core.projects.add(str(project_dir), name="web", pipeline=pipeline,
                                      lock_ttl=30, timeout=60)
    again = await core.projects.find("web")
    assert again == project
    assert (again.lock_ttl, again.timeout) == (30.0, 60.0)
    assert again.stage_for("main") == Stage("Production", "main",
                                            (EnvVar("API_URL", "https://api"),))
    assert again.stage_for("develop") is None


async def test_default_name_collision_gets_a_suffix(core: Deployster, tmp_path: Path) -> None:
    names = []
    for parent in ("a", "b", "c"):
        directory = tmp_path / parent / "web"
        directory.mkdir(parents=True)
        names.append((await core.projects.add(str(directory))).name)
    assert names == ["web", "web-2", "web-3"]


async def test_explicit_name_collision_is_a_conflict(core: Deployster, tmp_path: Path) -> None:
    for parent in ("a", "b"):
        (tmp_path / parent).mkdir()
    await core.projects.add(str(tmp_path / "a"), name="shop")
    with pytest.raises(Conflict, match="a project named 'shop' already exists; pick another"):
        await core.projects.add(str(tmp_path / "b"), name="shop")
    assert [p.name for p in await core.projects.all()] == ["shop"]


@pytest.mark.parametrize("name", ["has space", "-dash-first", "a/b", "x" * 101, "", "web\n"])
async def test_bad_explicit_names_are_refused(
    core: Deployster, project_dir: Path, name: str
) -> None:
    with pytest.raises(InvalidRequest, match="letters, digits") as err:
        await core.projects.add(str(project_dir), name=name)
    assert err.value.code == "invalid_name"


async def test_a_file_or_missing_directory_is_refused(core: Deployster, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("hi")
    with pytest.raises(InvalidRequest, match="is not a directory"):
        await core.projects.add(str(a_file))
    with pytest.raises(InvalidRequest, match="is not a directory"):
        await core.projects.add(str(tmp_path / "missing"))
    assert await core.projects.all() == []


async def test_the_same_directory_cannot_be_added_twice(
    core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    await core.projects.add(str(project_dir))
    link = tmp_path / "link"
    link.symlink_to(project_dir)
    for spelling in (str(project_dir), f"{project_dir}/", str(link)):
        with pytest.raises(Conflict, match="already registered at") as err:
            await core.projects.add(spelling, name="other")
        assert err.value.code == "project_exists"
    assert len(await core.projects.all()) == 1


async def test_bad_ttl_timeout_or_pipeline_stores_nothing(
    core: Deployster, project_dir: Path
) -> None:
    with pytest.raises(InvalidRequest, match="lock TTL must be a positive"):
        await core.projects.add(str(project_dir), lock_ttl=-1)
    with pytest.raises(InvalidRequest, match="timeout must be a positive"):
        await core.projects.add(str(project_dir), timeout=0)
    with pytest.raises(InvalidRequest, match="newline"):
        await core.projects.add(str(project_dir), pipeline=[stage({"key": "A", "value": "\n"})])
    assert await core.projects.all() == []


async def test_edit_changes_fields_and_keeps_the_rest(
    core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    project = await core.projects.add(str(project_dir), lock_ttl=30)
    edited = await core.projects.edit(project, timeout=5, pipeline=[stage()])
    assert (edited.name, edited.lock_ttl, edited.timeout) == ("my-app", 30.0, 5.0)
    assert [s.git_branch for s in edited.pipeline] == ["main"]
    (tmp_path / "other").mkdir()
    await core.projects.add(str(tmp_path / "other"))
    with pytest.raises(Conflict, match="a project named 'other' already exists"):
        await core.projects.edit(edited, name="other")
    renamed = await core.projects.edit(edited, name="renamed")
    assert renamed.name == "renamed" and renamed.timeout == 5.0


async def test_find_by_name_id_or_path(core: Deployster, project_dir: Path) -> None:
    project = await core.projects.add(str(project_dir))
    for ref in ("my-app", str(project.id), str(project_dir), f"{project_dir}/"):
        assert await core.projects.find(ref) == project
    with pytest.raises(UnknownProject, match="see 'deployster project list'"):
        await core.projects.find("nope")
    with pytest.raises(UnknownProject):
        await core.projects.find(str(project.id + 100))


# -------------------------------------------------------- for_deploy / roots


@pytest.fixture
async def rooted_core(settings: Settings, root: Path) -> AsyncIterator[Deployster]:
    the_core = await Deployster.open(settings.with_overrides(allowed_roots=[root]))
    try:
        yield the_core
    finally:
        await the_core.close()


async def test_unknown_path_outside_roots_says_how_to_register(
    rooted_core: Deployster, project_dir: Path
) -> None:
    path = os.path.realpath(project_dir)
    with pytest.raises(UnknownProject) as err:
        await rooted_core.projects.for_deploy(f"{project_dir}/")
    assert f"deployster project add {path}" in err.value.message
    assert "DEPLOYSTER_ALLOWED_ROOTS" in err.value.message
    assert err.value.code == "unknown_project" and err.value.http_status == 404
    assert await rooted_core.projects.all() == []


async def test_without_allowed_roots_only_registered_projects_deploy(
    core: Deployster, project_dir: Path
) -> None:
    with pytest.raises(UnknownProject, match="deployster project add"):
        await core.projects.for_deploy(str(project_dir))
    project = await core.projects.add(str(project_dir))
    assert await core.projects.for_deploy(f"{project_dir}/") == project


async def test_path_under_an_allowed_root_self_registers_once(
    rooted_core: Deployster, root: Path
) -> None:
    app = root / "shop"
    app.mkdir()
    first = await rooted_core.projects.for_deploy(str(app))
    assert (first.name, first.path) == ("shop", str(app))
    second = await rooted_core.projects.for_deploy(f"{root}/./shop/")
    assert second == first
    assert [p.id for p in await store.select_projects(rooted_core.db)] == [first.id]

    nested = root / "team" / "api"
    nested.mkdir(parents=True)
    assert (await rooted_core.projects.for_deploy(str(nested))).name == "api"


async def test_the_allowed_root_itself_is_not_a_project(
    rooted_core: Deployster, root: Path
) -> None:
    for spelling in (str(root), f"{root}/", f"{root}/shop/.."):
        with pytest.raises(UnknownProject, match="deployster project add"):
            await rooted_core.projects.for_deploy(spelling)
    assert await rooted_core.projects.all() == []


async def test_a_sibling_sharing_the_roots_prefix_is_not_under_it(
    rooted_core: Deployster, root: Path
) -> None:
    sibling = root.parent / f"{root.name}-evil"
    sibling.mkdir()
    with pytest.raises(UnknownProject):
        await rooted_core.projects.for_deploy(str(sibling))


async def test_a_missing_directory_under_a_root_is_refused(
    rooted_core: Deployster, root: Path
) -> None:
    with pytest.raises(InvalidRequest, match="is not a directory on the server"):
        await rooted_core.projects.for_deploy(str(root / "ghost"))
    assert await rooted_core.projects.all() == []


async def test_a_symlink_escaping_the_root_does_not_self_register(
    rooted_core: Deployster, root: Path, project_dir: Path
) -> None:
    (root / "sneaky").symlink_to(project_dir)
    with pytest.raises(UnknownProject) as err:
        await rooted_core.projects.for_deploy(str(root / "sneaky"))
    assert f"(which resolves to {os.path.realpath(project_dir)})" in err.value.message
    assert await rooted_core.projects.all() == []


async def test_a_symlink_into_the_root_self_registers_as_sent(
    rooted_core: Deployster, root: Path, tmp_path: Path
) -> None:
    """The roots check uses the resolved path; the project keeps the path as sent."""
    (root / "shop").mkdir()
    outside = tmp_path / "shop-link"
    outside.symlink_to(root / "shop")
    project = await rooted_core.projects.for_deploy(str(outside))
    assert project.path == str(outside)
    # The directory it names is that project, however it is spelled.
    assert await rooted_core.projects.for_deploy(str(root / "shop")) == project


# ------------------------------------------------- a Capistrano-style current


async def test_a_switched_current_symlink_stays_one_project(
    rooted_core: Deployster, root: Path
) -> None:
    """``current`` moved from releases/1 to releases/2 between two deploys (the
    usual release switch) is the same project; so is the release it points at."""
    app = root / "app"
    (app / "releases" / "1").mkdir(parents=True)
    (app / "releases" / "2").mkdir()
    current = app / "current"
    current.symlink_to(app / "releases" / "1", target_is_directory=True)
    first = await rooted_core.projects.for_deploy(str(current))
    assert first.path == str(current)

    current.unlink()
    current.symlink_to(app / "releases" / "2", target_is_directory=True)
    assert await rooted_core.projects.for_deploy(f"{current}/") == first
    # The release it now points at resolves to the project's directory.
    assert await rooted_core.projects.for_deploy(str(app / "releases" / "2")) == first
    # The old release is another directory: under the root, a project of its own.
    other = await rooted_core.projects.for_deploy(str(app / "releases" / "1"))
    assert other.id != first.id
    assert len(await rooted_core.projects.all()) == 2


async def test_add_refuses_a_second_spelling_of_a_switched_current(
    core: Deployster, tmp_path: Path
) -> None:
    release = tmp_path / "releases" / "7"
    release.mkdir(parents=True)
    current = tmp_path / "current"
    current.symlink_to(release, target_is_directory=True)
    project = await core.projects.add(str(current))
    with pytest.raises(Conflict, match=f"already registered at {current}"):
        await core.projects.add(str(release), name="release-7")
    assert await core.projects.find(str(release)) == project


# ------------------------------------------------------ racing registrations


async def test_racing_first_deploys_of_one_directory_make_one_project(
    rooted_core: Deployster, settings: Settings, root: Path
) -> None:
    """Two CI runs (here in two processes' worth of cores) deploy a new directory
    at once: each gets the one project, none an error."""
    app = root / "fresh"
    app.mkdir()
    other = await Deployster.open(settings.with_overrides(allowed_roots=[root]))
    try:
        results = await asyncio.gather(
            *[core.projects.for_deploy(str(app)) for core in (rooted_core, other) * 4]
        )
    finally:
        await other.close()
    assert {p.id for p in results} == {results[0].id}
    assert [p.path for p in await rooted_core.projects.all()] == [str(app)]


async def test_racing_new_directories_with_one_name_get_distinct_names(
    rooted_core: Deployster, settings: Settings, root: Path
) -> None:
    dirs = [root / team / "web" for team in ("a", "b", "c")]
    for path in dirs:
        path.mkdir(parents=True)
    other = await Deployster.open(settings.with_overrides(allowed_roots=[root]))
    try:
        results = await asyncio.gather(
            rooted_core.projects.for_deploy(str(dirs[0])),
            other.projects.for_deploy(str(dirs[1])),
            rooted_core.projects.for_deploy(str(dirs[2])),
        )
    finally:
        await other.close()
    assert sorted(p.name for p in results) == ["web", "web-2", "web-3"]
    assert sorted(p.path for p in results) == sorted(str(d) for d in dirs)


# ------------------------------------------------------------------- cache


async def test_a_project_added_by_another_process_is_seen_at_once(
    core: Deployster, settings: Settings, project_dir: Path
) -> None:
    with pytest.raises(UnknownProject):  # warms this process's cache
        await core.projects.for_deploy(str(project_dir))
    assert await core.projects.all() == []

    other = await Deployster.open(settings)
    try:
        added = await other.projects.add(str(project_dir), timeout=60)
        assert await core.projects.for_deploy(str(project_dir)) == added

        edited = await other.projects.edit(added, timeout=5)
        seen = await core.projects.for_deploy(str(project_dir))
        assert seen.timeout == 5.0 and seen == edited
    finally:
        await other.close()
