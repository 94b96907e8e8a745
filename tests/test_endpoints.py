"""The allowlist file and its loader: the shipped file is the seed's list, and broken files are refused clearly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from keyscope.allowlist import table as endpoints
from keyscope.allowlist.table import Endpoint, EndpointsError, IdLocation, JsonStep

SEED = Path(__file__).parent / "data" / "seed_endpoints.tsv"
REPO_FILE = Path(__file__).resolve().parents[1] / "endpoints.yaml"


def seed_rows() -> list[dict[str, str]]:
    with SEED.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


@pytest.fixture(scope="module")
def shipped() -> dict[tuple[str, str], Endpoint]:
    loaded = endpoints.load(REPO_FILE)
    return {(endpoint.method, endpoint.path): endpoint for endpoint in loaded}


# --- the shipped file ------------------------------------------------------------------------------------------


def test_shipped_file_is_exactly_the_seed_list() -> None:
    rows = seed_rows()
    loaded = endpoints.load(REPO_FILE)
    assert len(rows) == 128
    assert len(loaded) == 128
    assert {(row["method"], row["path"]) for row in rows} == {(e.method, e.path) for e in loaded}
    by_route = {(e.method, e.path): e for e in loaded}
    for row in rows:
        endpoint = by_route[row["method"], row["path"]]
        deprecated = row["function"].startswith("Deprecated ")
        assert endpoint.function == row["function"].removeprefix("Deprecated ")
        assert endpoint.deprecated is deprecated


def test_only_the_seed_marked_endpoint_is_deprecated(shipped: dict[tuple[str, str], Endpoint]) -> None:
    assert [route for route, e in shipped.items() if e.deprecated] == [("GET", "/mms/1/reports")]


@pytest.mark.parametrize(
    ("prefix", "group"),
    [
        ("/ccaas/", "Customer engagement / Conversations"),
        ("/people/", "People / People"),
        ("/sms/", "Channels / SMS"),
        ("/calls/", "Channels / Voice"),
        ("/push/", "Channels / Mobile push and in-app messaging"),
        ("/metrics/", "Platform / Metrics"),
        ("/messages-api/", "Platform / Messages API"),
        ("/provisioning/", "Platform / Sending Strategy Management"),
    ],
)
def test_groups(shipped: dict[tuple[str, str], Endpoint], prefix: str, group: str) -> None:
    matching = [e for (_, path), e in shipped.items() if path.startswith(prefix)]
    assert matching
    assert {e.group for e in matching} == {group}


QUERY = IdLocation("query", (), "query")
MESSAGES_PLATFORM = IdLocation(
    "json", (JsonStep("messages", True), JsonStep("options"), JsonStep("platform")), "messages[].options.platform"
)


@pytest.mark.parametrize(
    ("method", "path", "ids", "errors"),
    [
        ("GET", "/sms/3/logs", (QUERY,), "api-error"),
        ("GET", "/sms/1/reports", (QUERY,), "legacy"),
        ("GET", "/email/1/logs", (QUERY,), "legacy"),
        ("GET", "/mms/1/inbox/reports", (QUERY,), "legacy"),
        ("POST", "/email/3/send", (IdLocation("form", (), "form"),), "legacy"),
        ("POST", "/sms/3/messages", (MESSAGES_PLATFORM,), "api-error"),
        ("POST", "/messages-api/1/messages", (MESSAGES_PLATFORM,), "api-error"),
        ("POST", "/sms/2/text/advanced", (IdLocation("json", (JsonStep("messages", True),), "messages[]"),), "legacy"),
        ("POST", "/whatsapp/1/message/template", (IdLocation("json", (JsonStep("messages", True),), "messages[]"),),
         "legacy"),
        ("POST", "/whatsapp/1/message/text", (IdLocation("json", (), "$"),), "legacy"),
        ("POST", "/viber/1/message/image", (IdLocation("json", (), "$"),), "legacy"),
        ("POST", "/ott/rcs/1/message", (IdLocation("json", (), "$"),), "legacy"),
        ("POST", "/calls/1/calls", (IdLocation("json", (JsonStep("platform"),), "platform"),), "legacy"),
        ("PATCH", "/whatsapp/2/senders/{sender}/templates/{id}",
         (IdLocation("json", (JsonStep("platform"),), "platform"),), "legacy"),
        ("POST", "/provisioning/2/sending-strategies", (IdLocation("json", (JsonStep("platform"),), "platform"),),
         "api-error"),
        ("POST", "/rcs/2/capability-check/query",
         (IdLocation("json", (JsonStep("options"), JsonStep("platform")), "options.platform"),), "api-error"),
        ("POST", "/apple-mfb/1/events",
         (IdLocation("json", (JsonStep("events", True), JsonStep("options"), JsonStep("platform")),
                     "events[].options.platform"),), "api-error"),
        ("POST", "/metrics/1/query-aggregate-data",
         (IdLocation("json", (JsonStep("request"), JsonStep("filterBy")), "request.filterBy"),
          IdLocation("json", (JsonStep("request"), JsonStep("filterBy"), JsonStep("platforms", True)),
                     "request.filterBy.platforms[]")), "api-error"),
        ("POST", "/ccaas/1/conversations", (), "legacy"),
        ("GET", "/people/3/segments/{segmentId}", (), "api-error"),
        ("POST", "/messages-api/1/events", (), "api-error"),
        # decided without a spec (commented in the file)
        ("POST", "/zalo-follower/1/messages", (MESSAGES_PLATFORM,), "api-error"),
        ("GET", "/zalo-follower/1/logs", (QUERY,), "api-error"),
        ("GET", "/ccaas/1/queues/{queueId}/agents", (), "legacy"),
    ],
)
def test_ids_and_errors_samples(
    shipped: dict[tuple[str, str], Endpoint], method: str, path: str, ids: tuple[IdLocation, ...], errors: str
) -> None:
    endpoint = shipped[method, path]
    assert endpoint.ids == ids
    assert endpoint.carries_ids is bool(ids)
    assert endpoint.errors == errors


def test_ids_styles_hold_across_the_whole_file(shipped: dict[tuple[str, str], Endpoint]) -> None:
    for (method, path), endpoint in shipped.items():
        if path.startswith(("/ccaas/", "/people/")):
            assert endpoint.ids == (), path
            assert endpoint.errors == ("legacy" if path.startswith("/ccaas/") else "api-error"), path
        elif method == "GET":
            assert endpoint.ids == (QUERY,), path
        else:
            assert all(location.kind in ("json", "form") for location in endpoint.ids), path
    assert sum(1 for e in shipped.values() if not e.ids) == 40


# --- default path ----------------------------------------------------------------------------------------------


def test_default_path_resolves_and_loads() -> None:
    path = endpoints.default_path()
    assert path.is_file()
    assert path.name == "endpoints.yaml"
    assert path.read_bytes() == REPO_FILE.read_bytes()
    assert endpoints.load() == endpoints.load(path) == endpoints.load(str(path))
    assert len(endpoints.load(None)) == 128


# --- accepted files --------------------------------------------------------------------------------------------

FIELDS = {
    "function": "Get logs",
    "method": "GET",
    "path": "/x/1/logs",
    "group": "Channels / X",
    "ids": "[query]",
    "errors": "legacy",
}


def entry(**overrides: str | None) -> str:
    """One block-style entry; values are raw YAML text, None drops the field."""
    fields = {**FIELDS, **overrides}
    lines = [f"{name}: {value}" for name, value in fields.items() if value is not None]
    return "  - " + "\n    ".join(lines) + "\n"


def document(*entries: str) -> str:
    return "endpoints:\n" + "".join(entries)


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "endpoints.yaml"
    file.write_text(text, encoding="utf-8")
    return file


def test_accepts_every_form(tmp_path: Path) -> None:
    text = document(
        entry(),
        entry(method="HEAD", path="/x/1/logs", deprecated="false"),
        entry(method="OPTIONS", path="/a/{b}/c:d@e!$&'()*+,=-._~/{c_2}"),
        entry(method="POST", path="/x/1/messages", ids='[query, form, {json: $}, {json: "a[].b-c"}, {json: d}]',
              errors="api-error", deprecated="true"),
        entry(method="DELETE", path="/x/{id}", ids="none"),
    )
    loaded = endpoints.load(write(tmp_path, text))
    assert [(e.method, e.path) for e in loaded] == [
        ("GET", "/x/1/logs"),
        ("HEAD", "/x/1/logs"),
        ("OPTIONS", "/a/{b}/c:d@e!$&'()*+,=-._~/{c_2}"),
        ("POST", "/x/1/messages"),
        ("DELETE", "/x/{id}"),
    ]
    post = loaded[3]
    assert post.deprecated is True and post.errors == "api-error"
    assert post.ids == (
        IdLocation("query", (), "query"),
        IdLocation("form", (), "form"),
        IdLocation("json", (), "$"),
        IdLocation("json", (JsonStep("a", True), JsonStep("b-c")), "a[].b-c"),
        IdLocation("json", (JsonStep("d"),), "d"),
    )
    assert loaded[4].ids == () and not loaded[4].carries_ids


def test_empty_list_is_an_empty_allowlist(tmp_path: Path) -> None:
    assert endpoints.load(write(tmp_path, "endpoints: []\n")) == []


def test_parse_takes_an_already_parsed_document() -> None:
    raw = {"function": "f", "method": "GET", "path": "/a/{b}", "group": "g", "ids": ["query"], "errors": "legacy"}
    assert endpoints.parse({"endpoints": [raw]}) == [
        Endpoint("GET", "/a/{b}", "f", "g", (IdLocation("query", (), "query"),), "legacy")
    ]
    with pytest.raises(EndpointsError, match=r"^mine: entry 1 \(put /a/\{b\}\): unknown method 'put'"):
        endpoints.parse({"endpoints": [{**raw, "method": "put"}]}, source="mine")


# --- refused files ---------------------------------------------------------------------------------------------

GOOD_FIRST = entry(path="/first")

BROKEN_ENTRIES = [
    ("unknown-field", entry(idz="[query]"), "(GET /x/1/logs)", "unknown field 'idz'"),
    ("missing-field", entry(errors=None), "(GET /x/1/logs)", "missing field 'errors'"),
    ("function-type", entry(function="12"), "(GET /x/1/logs)", "function must be a non-empty string, got int 12"),
    ("group-empty", entry(group='""'), "(GET /x/1/logs)", "group must be a non-empty string"),
    ("function-null", entry(function="null"), "(GET /x/1/logs)", "function must be a non-empty string, got null"),
    ("method-unknown", entry(method="FETCH"), "(FETCH /x/1/logs)", "unknown method 'FETCH'"),
    ("method-lowercase", entry(method="get"), "(get /x/1/logs)", "unknown method 'get'"),
    ("method-list", entry(method="[GET]"), "(/x/1/logs)", "unknown method ['GET']"),
    ("path-type", entry(path="[a]"), "entry 2:", "path must be a string, got a list"),
    ("path-relative", entry(path="x/1"), "(GET x/1)", "must start with '/'"),
    ("path-open-brace", entry(path="/a/{id"), "(GET /a/{id)", "unbalanced braces"),
    ("path-close-brace", entry(path="/a/id}"), "(GET /a/id})", "unbalanced braces"),
    ("path-reversed-braces", entry(path="/a/}id{"), "(GET /a/}id{)", "unbalanced braces"),
    ("path-nested", entry(path="/a/{{id}}"), "(GET /a/{{id}})", "nested braces"),
    ("param-prefix", entry(path="/a/x{id}"), "(GET /a/x{id})", "parameter in 'x{id}' must be a whole segment"),
    ("param-suffix", entry(path="/a/{id}.json"), "(GET /a/{id}.json)", "must be a whole segment"),
    ("param-two", entry(path="/a/{x}{y}"), "(GET /a/{x}{y})", "must be a whole segment"),
    ("param-spans-slash", entry(path="/a/{x/y}"), "(GET /a/{x/y})", "must be a whole segment"),
    ("param-empty", entry(path="/a/{}"), "(GET /a/{})", "parameter name '' is not an identifier"),
    ("param-digit", entry(path="/a/{1d}"), "(GET /a/{1d})", "parameter name '1d' is not an identifier"),
    ("param-dash", entry(path="/a/{a-b}"), "(GET /a/{a-b})", "parameter name 'a-b' is not an identifier"),
    ("param-duplicate", entry(path="/a/{id}/b/{id}"), "(GET /a/{id}/b/{id})", "duplicate parameter name 'id'"),
    ("empty-segment", entry(path="/a//b"), "(GET /a//b)", "empty segment"),
    ("trailing-slash", entry(path="/a/b/"), "(GET /a/b/)", "empty segment"),
    ("root", entry(path="/"), "(GET /)", "empty segment"),
    ("dot", entry(path="/a/./b"), "(GET /a/./b)", "has a '.' segment"),
    ("dot-dot", entry(path="/a/.."), "(GET /a/..)", "has a '..' segment"),
    ("space", entry(path='"/a/b c"'), "(GET /a/b c)", "character ' ' in 'b c' is not allowed"),
    ("query", entry(path="/a/b?c=1"), "(GET /a/b?c=1)", "character '?'"),
    ("fragment", entry(path='"/a/b#c"'), "(GET /a/b#c)", "character '#'"),
    ("backslash", entry(path='"/a/b\\\\c"'), "(GET /a/b\\c)", "character '\\\\'"),
    ("non-ascii", entry(path="/a/café"), "(GET /a/café)", "character 'é'"),
    ("bad-percent", entry(path="/a/%zz"), "(GET /a/%zz)", "malformed percent-encoding"),
    ("short-percent", entry(path="/a/b%2"), "(GET /a/b%2)", "malformed percent-encoding"),
    ("lowercase-percent", entry(path="/a/%2f"), "(GET /a/%2f)", "malformed percent-encoding"),
    ("encoded-dot", entry(path="/a/%2E%2E"), "(GET /a/%2E%2E)", "'%2E' in '%2E%2E' encodes '.'"),
    ("encoded-letter", entry(path="/a/%41"), "(GET /a/%41)", "encodes 'A'"),
    # the matcher compares static segments byte for byte, and step 1 refuses `;` and `%2F` in every request
    ("semicolon", entry(path="/a;b"), "(GET /a;b)", "';' in 'a;b': path parameters are refused"),
    ("encoded-slash", entry(path="/a%2Fb"), "(GET /a%2Fb)", "'%2F' in 'a%2Fb' encodes '/', which step 1 refuses"),
    ("encoded-space", entry(path="/x%20y"), "(GET /x%20y)", "'%20' in 'x%20y': a template's segments are written unencoded"),
    ("encoded-utf8", entry(path="/caf%C3%A9"), "(GET /caf%C3%A9)", "'%C3' in 'caf%C3%A9': a template's segments"),
    ("ids-unknown-kind", entry(ids="[body]"), "(GET /x/1/logs)", "unknown ids location 'body'"),
    ("ids-json-and-query", entry(ids="[{json: a, query: b}]"), "(GET /x/1/logs)", "unknown ids location"),
    ("ids-empty", entry(ids="[]"), "(GET /x/1/logs)", "ids must be 'none' or a non-empty list of locations, got an empty list"),
    ("ids-other-string", entry(ids="all"), "(GET /x/1/logs)", "got string 'all'"),
    ("ids-null", entry(ids="null"), "(GET /x/1/logs)", "got null"),
    ("ids-none-mixed", entry(ids="[none, query]"), "(GET /x/1/logs)", "'none' cannot be combined"),
    ("ids-duplicate", entry(ids="[query, query]"), "(GET /x/1/logs)", "duplicate ids location 'query'"),
    ("ids-duplicate-json", entry(ids='[{json: "m[]"}, {json: "m[]"}]'), "(GET /x/1/logs)",
     "duplicate ids location 'm[]'"),
    ("json-dollar-prefix", entry(ids='[{json: "$.messages[]"}]'), "(GET /x/1/logs)",
     "malformed json location '$.messages[]' (write 'messages[]')"),
    ("json-open-bracket", entry(ids='[{json: "messages["}]'), "(GET /x/1/logs)", "malformed json location"),
    ("json-empty-step", entry(ids="[{json: a..b}]"), "(GET /x/1/logs)", "malformed json location 'a..b'"),
    ("json-index", entry(ids='[{json: "a[0]"}]'), "(GET /x/1/logs)", "malformed json location 'a[0]'"),
    ("json-bare-each", entry(ids='[{json: "[]"}]'), "(GET /x/1/logs)", "malformed json location '[]'"),
    ("json-empty", entry(ids='[{json: ""}]'), "(GET /x/1/logs)", "malformed json location ''"),
    ("json-type", entry(ids="[{json: 3}]"), "(GET /x/1/logs)", "json location must be a string, got int 3"),
    ("errors-unknown", entry(errors="json-api"), "(GET /x/1/logs)", "unknown errors family 'json-api'"),
    ("deprecated-string", entry(deprecated='"yes"'), "(GET /x/1/logs)", "deprecated must be true or false"),
    ("deprecated-int", entry(deprecated="1"), "(GET /x/1/logs)", "deprecated must be true or false, got int 1"),
    ("duplicate-key", entry() + "    ids: none\n", "(GET /x/1/logs)", "duplicate key 'ids' at line 14"),
    ("duplicate-route", entry(path="/first", function="Other"), "(GET /first)",
     "duplicate (method, path): the same as entry 1"),
    ("not-a-mapping", "  - GET /x/1/logs\n", "entry 2:", "must be a mapping, got string 'GET /x/1/logs'"),
]


@pytest.mark.parametrize(("text", "label", "problem"), [case[1:] for case in BROKEN_ENTRIES],
                         ids=[case[0] for case in BROKEN_ENTRIES])
def test_broken_entry_is_refused_naming_it(tmp_path: Path, text: str, label: str, problem: str) -> None:
    file = write(tmp_path, document(GOOD_FIRST, text))
    with pytest.raises(EndpointsError) as caught:
        endpoints.load(file)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{file}:8: entry 2")
    assert label in message
    assert problem in message
    assert caught.value.problems == (message,)


def test_same_route_with_other_parameter_names_is_a_duplicate(tmp_path: Path) -> None:
    file = write(tmp_path, document(entry(path="/a/{x}/b"), entry(path="/a/b/c"), entry(path="/a/{y}/b")))
    with pytest.raises(EndpointsError) as caught:
        endpoints.load(file)
    assert str(caught.value) == (
        f"{file}:14: entry 3 (GET /a/{{y}}/b): duplicate (method, path): the same route as '/a/{{x}}/b', as entry 1"
    )


def test_every_problem_is_reported_one_line_each(tmp_path: Path) -> None:
    file = write(tmp_path, document(entry(method="FETCH"), entry(), entry(path="/a//b", errors="x"), entry()))
    with pytest.raises(EndpointsError) as caught:
        endpoints.load(file)
    lines = str(caught.value).splitlines()
    assert lines == list(caught.value.problems)
    assert len(lines) == 4
    assert lines[0].startswith(f"{file}:2: entry 1 (FETCH /x/1/logs): unknown method 'FETCH'")
    assert lines[1].startswith(f"{file}:14: entry 3 (GET /a//b): path '/a//b' has an empty segment")
    assert lines[2].startswith(f"{file}:14: entry 3 (GET /a//b): unknown errors family 'x'")
    assert lines[3] == f"{file}:20: entry 4 (GET /x/1/logs): duplicate (method, path): the same as entry 2"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "expected a mapping with the key 'endpoints', got a list"),
        ("endpoints\n", "expected a mapping with the key 'endpoints', got string 'endpoints'"),
        ("endpoint: []\n", "unknown top-level key 'endpoint'"),
        ("version: 1\n", "missing top-level key 'endpoints'"),
        ("endpoints:\n", "'endpoints' must be a list, got null"),
        ("endpoints: {a: 1}\n", "'endpoints' must be a list, got a mapping"),
        ("endpoints: []\nendpoints: []\n", "duplicate key 'endpoints' at line 2"),
    ],
)
def test_broken_top_level_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    file = write(tmp_path, text)
    with pytest.raises(EndpointsError) as caught:
        endpoints.load(file)
    assert str(caught.value).startswith(f"{file}: ")
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (document(GOOD_FIRST) + "  - function: x\n   method: GET\n", ":9:4:"),
        ("endpoints: [\n", ":2:"),
        ('endpoints:\n  - function: "unterminated\n', ":3:"),
        ("endpoints: *nothing\n", ":1:"),
        ("endpoints: !!python/object:os.system {}\n", ":1:"),
    ],
)
def test_yaml_syntax_errors_name_the_line(tmp_path: Path, text: str, where: str) -> None:
    file = write(tmp_path, text)
    with pytest.raises(EndpointsError) as caught:
        endpoints.load(file)
    message = str(caught.value)
    assert message.startswith(f"{file}{where}")
    assert "invalid YAML" in message
    assert len(message.splitlines()) == 1


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(EndpointsError, match="cannot read"):
        endpoints.load(missing)
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("endpoints: []  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(EndpointsError, match="not UTF-8 text"):
        endpoints.load(binary)
