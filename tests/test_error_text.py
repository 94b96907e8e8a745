"""core.errors.describe: the one reader of the management API's error bodies, for the CLI and the web interface."""

from __future__ import annotations

import json

import pytest

from keyscope.cli.api import Refused
from keyscope.cli.errors import error_lines
from keyscope.core.errors import ErrorText, body, describe


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 500, 502])
def test_bodies_without_a_field_read_back_as_their_headline(status: int) -> None:
    legacy = json.loads(body(status, "legacy"))["requestError"]["serviceException"]
    assert describe(status, body(status, "legacy")) == ErrorText(status, legacy["text"])
    api_error = json.loads(body(status, "api-error"))
    assert describe(status, body(status, "api-error")) == ErrorText(status, api_error["description"])


def test_a_field_reads_back_in_either_family() -> None:
    assert describe(400, body(400, "legacy", "platform[1].action", "must be FILL or FORCE")) == ErrorText(
        400, "Bad request", (("platform[1].action", ("must be FILL or FORCE",)),)
    )
    assert describe(409, body(409, "api-error", "applicationName", "taken")) == ErrorText(
        409, "The request conflicts with existing resources.", (("applicationName", ("taken",)),)
    )


def test_every_message_of_a_field_is_kept_in_the_bodys_order() -> None:
    errors = {"a": ["m1", "m2"], "b": "m3"}
    legacy = {"requestError": {"serviceException": {"messageId": "BAD", "validationErrors": errors}}}
    assert describe(400, json.dumps(legacy).encode()) == ErrorText(400, "BAD", (("a", ("m1", "m2")), ("b", ("m3",))))
    violations = [{"property": "a", "violation": "v1"}, {"property": "a", "violation": "v2"}]
    api_error = {"errorCode": "E400", "violations": violations}
    assert describe(400, json.dumps(api_error).encode()).fields == (("a", ("v1",)), ("a", ("v2",)))


@pytest.mark.parametrize(
    ("raw", "headline"),
    [
        (b"", None),
        (b"  \n", None),
        (b"upstream said no\n", "upstream said no"),
        (b'"a JSON string"', "a JSON string"),
        (b"[1, 2]", None),
        (b"{}", None),
        (b'{"requestError": {"serviceException": {}}}', None),
        (b'{"errorCode": null}', None),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_a_body_in_neither_family_says_at_most_a_headline(raw: bytes, headline: str | None) -> None:
    assert describe(502, raw) == ErrorText(502, headline)


@pytest.mark.parametrize(
    "doc",
    [
        {"requestError": "x"},
        {"requestError": {"serviceException": {"validationErrors": ["a"]}}},
        {"errorCode": "E1", "violations": "x"},
        {"errorCode": "E1", "violations": ["x", {"violation": "v"}]},
    ],
)
def test_odd_shapes_never_raise(doc: object) -> None:
    assert isinstance(describe(400, json.dumps(doc).encode()), ErrorText)


def test_the_cli_words_a_refusal_with_its_options() -> None:
    error = describe(400, body(400, "legacy", "platform[0].action", "must be FILL or FORCE"))
    assert error_lines(Refused(error)) == [
        "keyscope: refused: Bad request (HTTP 400)",
        "  platform[0].action: must be FILL or FORCE",
    ]
    assert error_lines(Refused(error, message="Worded.", flags={"platform[0]": "--link a::fill"})) == [
        "keyscope: refused: Worded. (HTTP 400)",
        "  --link a::fill: platform[0].action: must be FILL or FORCE",
    ]
    assert error_lines(Refused(describe(502, b""))) == ["keyscope: refused: HTTP 502"]
