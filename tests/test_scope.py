"""Steps 4-5: collecting ids wherever a backend could read them, checking them per place, FILL and FORCE.

Endpoints come from the real endpoints.yaml, so the declared locations tested are the ones the gateway uses.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keyscope import scope
from keyscope.allowlist import table as endpoints
from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.scope import form

ENDPOINTS = {(e.method, e.path): e for e in endpoints.load()}
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
JSON = b"application/json"
FORM = b"application/x-www-form-urlencoded"
Entry = tuple  # (application_id, entity_id) or (application_id, entity_id, action)


def ep(method: str, path: str) -> Endpoint:
    return ENDPOINTS[(method, path)]


def key(*entries: Entry) -> ApiKey:
    platform = tuple(
        PlatformEntry(f"entry-{i}", e[0], e[1], e[2] if len(e) > 2 else None) for i, e in enumerate(entries)
    )
    return ApiKey(
        id="key-1", name="test", secret_hash=b"\0" * 32, prefix="abcd1234", allowed_ips=(), valid_from=NOW,
        valid_to=NOW, enabled=True, platform=platform,
    )


PRIMARY = key()
SEND_SMS = ep("POST", "/sms/3/messages")  # messages[].options.platform
SMS_ADVANCED = ep("POST", "/sms/2/text/advanced")  # messages[]
WHATSAPP_TEXT = ep("POST", "/whatsapp/1/message/text")  # $
CREATE_CALL = ep("POST", "/calls/1/calls")  # platform
APPLE_EVENTS = ep("POST", "/apple-mfb/1/events")  # events[].options.platform
RCS_CAPABILITY = ep("POST", "/rcs/2/capability-check/query")  # options.platform
METRICS = ep("POST", "/metrics/1/query-aggregate-data")  # request.filterBy, request.filterBy.platforms[]
EMAIL_SEND = ep("POST", "/email/3/send")  # form
SMS_LOGS = ep("GET", "/sms/1/logs")  # query
CCAAS = ep("POST", "/ccaas/1/conversations")  # none


def run(endpoint: Endpoint | None, k: ApiKey, body: Any = None, *, query: bytes = b"",
        content_type: bytes | None = None, content_encoding: bytes | None = None) -> scope.Decision:
    if body is None:
        raw = b""
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body).encode()
        content_type = content_type or JSON
    return scope.inspect(endpoint, k, query=query, content_type=content_type, content_encoding=content_encoding,
                         body=raw)


def refusal(*args: Any, **kwargs: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        run(*args, **kwargs)
    assert caught.value.step == "scope"
    assert caught.value.detail
    return caught.value


def doc(decision: scope.Decision) -> Any:
    return json.loads(decision.body)


# --- query string -------------------------------------------------------------------------------------

def test_query_with_own_id_passes_untouched() -> None:
    query = b"applicationId=app-a&limit=10"
    decision = run(SMS_LOGS, key(("app-a", None)), query=query)
    assert decision.query is query and not decision.changed
    assert decision.application_ids == {"app-a"} and decision.entity_ids == frozenset()
    assert decision.entry == PlatformEntry("entry-0", "app-a", None)
    assert decision.places == [scope.Place("query", {"applicationId": "app-a"}, decision.entry)]


def test_query_with_another_applications_id_is_403() -> None:
    r = refusal(SMS_LOGS, key(("app-a", None)), query=b"applicationId=app-b")
    assert (r.status, r.reason, r.field) == (403, "id_out_of_scope", "applicationId")


def test_log_query_without_its_id_is_403_unless_filled() -> None:
    r = refusal(SMS_LOGS, key(("app-a", None)), query=b"limit=5")
    assert (r.status, r.reason, r.field) == (403, "id_missing", "applicationId")
    decision = run(SMS_LOGS, key(("app-a", None, "FILL")), query=b"limit=5")
    assert decision.query == b"limit=5&applicationId=app-a" and decision.changed
    decision = run(SMS_LOGS, key(("app a/&", "ent-1", "FILL")))
    assert decision.query == b"applicationId=app%20a%2F%26&entityId=ent-1"
    assert decision.application_ids == {"app a/&"} and decision.entity_ids == {"ent-1"}


def test_fill_keeps_ids_the_request_already_names() -> None:
    decision = run(SMS_LOGS, key(("app-a", "ent-1", "FILL")), query=b"entityId=ent-1&limit=5")
    assert decision.query == b"entityId=ent-1&limit=5&applicationId=app-a"
    r = refusal(SMS_LOGS, key(("app-a", "ent-1", "FILL")), query=b"entityId=ent-2")
    assert (r.reason, r.field) == ("id_out_of_scope", "entityId")


@pytest.mark.parametrize(("entries", "place", "named"), [
    ((("app-a", "ent-1"),), {"applicationId": "app-a", "entityId": "ent-2"}, ("entityId", "ent-2")),
    ((("app-a", None),), {"applicationId": "app-b", "entityId": "ent-9"}, ("applicationId", "app-b")),
    (((None, "ent-1"),), {"applicationId": "app-b", "entityId": "ent-2"}, ("entityId", "ent-2")),
    ((("app-a", "ent-1"),), {"applicationId": "app-b", "entityId": "ent-2"}, ("applicationId", "app-b")),
    ((("app-a", "ent-1"), ("app-b", "ent-2")), {"applicationId": "app-a", "entityId": "ent-2"},
     ("applicationId", "app-a")),
    ((("app-a", "ent-1"), ("app-b", None)), {"applicationId": "app-c", "entityId": "ent-1"},
     ("applicationId", "app-c")),
])
def test_out_of_scope_names_the_id_no_entry_accepts(entries: tuple[Entry, ...], place: dict[str, str],
                                                     named: tuple[str, str]) -> None:
    """The id no entry accepts on its own, else the place's first: the one a client should change."""
    for k in (key(*entries), key(*entries[:-1], (*entries[-1], "FILL"))):
        r = refusal(SMS_ADVANCED, k, {"messages": [{"text": "x", **place}]})
        assert (r.reason, r.field) == ("id_out_of_scope", f"messages[0].{named[0]}")
        assert r.detail == f"This key may not use {named[0]} {named[1]!r}."


def test_force_overwrites_query_ids() -> None:
    decision = run(SMS_LOGS, key(("app-a", "ent-1", "FORCE")), query=b"applicationId=app-b&limit=5")
    assert decision.query == b"applicationId=app-a&limit=5&entityId=ent-1"
    assert decision.application_ids == {"app-a"}
    again = run(SMS_LOGS, key(("app-a", "ent-1", "FORCE")), query=decision.query)
    assert not again.changed and again.query == decision.query


def test_entity_only_key_leaves_application_unconstrained() -> None:
    k = key((None, "ent-1"))
    decision = run(SMS_LOGS, k, query=b"applicationId=anything&entityId=ent-1")
    assert decision.application_ids == {"anything"}
    assert refusal(SMS_LOGS, k, query=b"applicationId=anything").reason == "id_missing"
    assert refusal(SMS_LOGS, k, query=b"entityId=ent-2").reason == "id_out_of_scope"


@pytest.mark.parametrize("name", [b"ApplicationID", b"APPLICATIONID", b"applicationid", b"%61pplicationId",
                                  b"appl%C4%B1cationId", b"application%49d"])
def test_query_names_are_case_insensitive(name: bytes) -> None:
    r = refusal(CCAAS, key(("app-a", None)), query=name + b"=app-b")
    assert (r.status, r.reason) == (403, "id_out_of_scope")
    assert run(CCAAS, key(("app-a", None)), query=name + b"=app-a").application_ids == {"app-a"}


@pytest.mark.parametrize("name", [b"applicationId%00", b"applicationId%00x", b"%20applicationId", b"applicationId%09",
                                  b"application%00Id"])
def test_names_a_backend_could_truncate_or_trim_to_an_id_name_count_as_ids(name: bytes) -> None:
    # A backend in C stops at NUL; lenient ones trim spaces: either would read these as applicationId.
    k = key(("app-a", None))
    if name == b"applicationId%00x":  # what follows a NUL is kept here, so it is not an id name
        assert run(CCAAS, k, query=name + b"=app-b").application_ids == frozenset()
        return
    assert refusal(CCAAS, k, query=name + b"=app-b").reason == "id_out_of_scope"
    assert refusal(CCAAS, k, name + b"=app-b", content_type=FORM).reason == "id_out_of_scope"
    assert refusal(CCAAS, k, query=b"applicationId=app-a&" + name + b"=app-a").reason == "duplicate_id"
    json_name = name.replace(b"%00", b"\\u0000").replace(b"%20", b" ").replace(b"%09", b"\\t")
    nested = b'{"x": {"' + json_name + b'": "app-b"}}'
    assert refusal(CCAAS, k, nested, content_type=JSON).reason == "id_out_of_scope"


def test_case_variant_at_a_declared_location_is_400() -> None:
    r = refusal(SMS_LOGS, key(("app-a", None)), query=b"ApplicationId=app-a")
    assert (r.status, r.reason, r.field) == (400, "id_name_case", "ApplicationId")


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (b"applicationId=app-a&applicationId=app-a", "duplicate_id"),
        (b"applicationId=app-a&ApplicationId=app-a", "duplicate_id"),
        (b"entityId=e&x=1&ENTITYID=e", "duplicate_id"),
        (b"applicationId[]=app-a", "id_array"),
        (b"applicationId[0]=app-b", "id_array"),
        (b"applicationId=app-a;applicationId=app-b", "semicolon"),
        (b"x=1;y=2", "semicolon"),
        (b"applicationId=%ff", "invalid_utf8"),
        (b"applicationId=%", "bad_escape"),
    ],
)
def test_query_ambiguity_is_400_for_every_key(query: bytes, reason: str) -> None:
    for k in (key(("app-a", None)), PRIMARY):
        r = refusal(CCAAS, k, query=query)
        assert (r.status, r.reason) == (400, reason)


def test_parse_query_keeps_raw_and_decoded_pairs_in_order() -> None:
    assert form.parse(b"a=1&b+c=d%20e&flag&&x=%C3%A9", "query", 100) == [
        (b"a", b"1", "a", "1"),
        (b"b+c", b"d%20e", "b c", "d e"),
        (b"flag", None, "flag", ""),
        (b"x", b"%C3%A9", "x", "\u00e9"),
    ]
    with pytest.raises(Refusal) as caught:
        form.parse(b"a=1;b=2", "query", 100)
    assert caught.value.reason == "semicolon"


# --- JSON locations: check, FILL, FORCE ----------------------------------------------------------------

def test_top_level_location() -> None:
    body = {"from": "441134960000", "to": "441134960001", "content": {"text": "Hi"}}
    assert refusal(WHATSAPP_TEXT, key(("app-a", None)), body).reason == "id_missing"
    filled = run(WHATSAPP_TEXT, key(("app-a", "ent-1", "FILL")), body)
    assert filled.body == (b'{"from":"441134960000","to":"441134960001","content":{"text":"Hi"},'
                           b'"applicationId":"app-a","entityId":"ent-1"}')
    forced = run(WHATSAPP_TEXT, key(("app-a", None, "FORCE")), {**body, "applicationId": "app-b", "entityId": "x"})
    assert doc(forced) == {**body, "applicationId": "app-a", "entityId": "x"}
    r = refusal(WHATSAPP_TEXT, key(("app-a", None)), {**body, "applicationId": "app-b"})
    assert (r.status, r.reason, r.field) == (403, "id_out_of_scope", "applicationId")


def test_platform_location() -> None:
    body = {"endpoint": {"type": "PHONE", "phoneNumber": "41792036727"}, "from": "41793026834"}
    filled = run(CREATE_CALL, key(("app-a", "ent-1", "FILL")), body)
    assert doc(filled)["platform"] == {"applicationId": "app-a", "entityId": "ent-1"}
    assert list(doc(filled)) == ["endpoint", "from", "platform"]
    forced = run(CREATE_CALL, key(("app-a", "ent-1", "FORCE")), {**body, "platform": {"applicationId": "app-b"}})
    assert doc(forced)["platform"] == {"applicationId": "app-a", "entityId": "ent-1"}
    nulled = run(CREATE_CALL, key(("app-a", None, "FILL")), {**body, "platform": None})
    assert doc(nulled)["platform"] == {"applicationId": "app-a"}
    r = refusal(CREATE_CALL, key(("app-a", None)), {**body, "platform": {"applicationId": "app-b"}})
    assert r.field == "platform.applicationId"
    assert refusal(CREATE_CALL, key(("app-a", None)), {**body, "platform": "app-a"}).reason == "bad_location"


def test_messages_location() -> None:
    body = {"messages": [{"from": "InfoSMS", "text": "a", "applicationId": "app-a"},
                         {"from": "InfoSMS", "text": "b"}]}
    r = refusal(SMS_ADVANCED, key(("app-a", None)), body)
    assert (r.reason, r.field) == ("id_missing", "messages[1].applicationId")
    filled = run(SMS_ADVANCED, key(("app-a", None, "FILL")), body)
    assert [m.get("applicationId") for m in doc(filled)["messages"]] == ["app-a", "app-a"]
    forced = run(SMS_ADVANCED, key(("app-a", "ent-1", "FORCE")), body)
    assert [(m["applicationId"], m["entityId"]) for m in doc(forced)["messages"]] == [("app-a", "ent-1")] * 2
    body["messages"][1]["applicationId"] = "app-b"
    r = refusal(SMS_ADVANCED, key(("app-a", None, "FILL")), body)
    assert (r.reason, r.field) == ("id_out_of_scope", "messages[1].applicationId")


def test_messages_options_platform_location() -> None:
    body = {"messages": [{"sender": "InfoSMS", "content": {"text": "Hi"}},
                         {"sender": "InfoSMS", "options": {"validityPeriod": {"amount": 1}}},
                         {"sender": "InfoSMS", "options": {"platform": {"applicationId": "app-a"}}}]}
    r = refusal(SEND_SMS, key(("app-a", None)), body)
    assert (r.reason, r.field) == ("id_missing", "messages[0].options.platform.applicationId")
    filled = run(SEND_SMS, key(("app-a", "ent-1", "FILL")), body)
    messages = doc(filled)["messages"]
    assert [m["options"]["platform"] for m in messages] == [{"applicationId": "app-a", "entityId": "ent-1"}] * 3
    assert messages[1]["options"] == {"validityPeriod": {"amount": 1},
                                      "platform": {"applicationId": "app-a", "entityId": "ent-1"}}
    assert filled.places[0].where == "$.messages[0].options.platform"
    forced = run(SEND_SMS, key(("app-a", None, "FORCE")), {"messages": [
        {"options": {"platform": {"applicationId": "app-b", "entityId": "e"}}}]})
    assert doc(forced)["messages"][0]["options"]["platform"] == {"applicationId": "app-a", "entityId": "e"}


def test_events_options_platform_location() -> None:
    body = {"events": [{"sender": "s", "destinations": [{"to": "x"}], "content": {"type": "TYPING_STARTED"}}]}
    assert refusal(APPLE_EVENTS, key(("app-a", None)), body).field == "events[0].options.platform.applicationId"
    filled = run(APPLE_EVENTS, key(("app-a", None, "FILL")), body)
    assert doc(filled)["events"][0]["options"] == {"platform": {"applicationId": "app-a"}}
    body["events"][0]["options"] = {"platform": {"applicationId": "app-b"}}
    forced = run(APPLE_EVENTS, key(("app-a", None, "FORCE")), body)
    assert doc(forced)["events"][0]["options"]["platform"] == {"applicationId": "app-a"}


def test_request_level_options_platform_location() -> None:
    body = {"sender": "s", "phoneNumbers": ["41793026727"]}
    filled = run(RCS_CAPABILITY, key(("app-a", None, "FILL")), body)
    assert doc(filled)["options"] == {"platform": {"applicationId": "app-a"}}


def test_metrics_filter_by() -> None:
    body = {"request": {"metrics": ["COUNT"], "filterBy": {"applicationId": "app-a"}}}
    assert run(METRICS, key(("app-a", None)), body).body == json.dumps(body).encode()  # absent platforms[]: no place
    assert refusal(METRICS, key(("app-a", None)), {"request": {"metrics": ["COUNT"]}}).reason == "id_missing"
    filled = run(METRICS, key(("app-a", "ent-1", "FILL")), {"request": {"metrics": ["COUNT"]}})
    assert doc(filled)["request"]["filterBy"] == {"applicationId": "app-a", "entityId": "ent-1"}
    filled = run(METRICS, key(("app-a", None, "FILL")), {"request": {"filterBy": {"platforms": [{"entityId": "e"}]}}})
    assert doc(filled)["request"]["filterBy"] == {"platforms": [{"entityId": "e", "applicationId": "app-a"}],
                                                  "applicationId": "app-a"}
    forced = run(METRICS, key(("app-a", None, "FORCE")),
                 {"request": {"filterBy": {"applicationId": "app-b", "platforms": [{"applicationId": "app-c"}]}}})
    assert doc(forced)["request"]["filterBy"] == {"applicationId": "app-a", "platforms": [{"applicationId": "app-a"}]}
    r = refusal(METRICS, key(("app-a", None)),
                {"request": {"filterBy": {"applicationId": "app-a", "platforms": [{"applicationId": "app-b"}]}}})
    assert r.field == "request.filterBy.platforms[0].applicationId"


def test_batch_without_messages_is_403_even_with_fill() -> None:
    for k in (key(("app-a", None)), key(("app-a", None, "FILL"))):
        assert refusal(SEND_SMS, k, {"messages": []}).reason == "id_missing"
        assert refusal(SEND_SMS, k, {"bulkId": "x"}).reason == "id_missing"
    assert run(SEND_SMS, PRIMARY, {"messages": []}).places == []


def test_declared_location_of_the_wrong_shape_is_400() -> None:
    k = key(("app-a", None, "FILL"))
    assert refusal(SEND_SMS, k, {"messages": {"0": {}}}).reason == "bad_location"
    assert refusal(SEND_SMS, k, {"messages": ["text"]}).field == "messages[0]"
    assert refusal(SEND_SMS, k, {"messages": [{"options": []}]}).reason == "bad_location"
    assert refusal(SEND_SMS, k, [{"messages": []}]).reason == "bad_location"


def test_json_location_without_a_json_body_is_missing() -> None:
    r = refusal(SEND_SMS, key(("app-a", None, "FILL")), b"applicationId=app-a", content_type=FORM)
    assert (r.status, r.reason) == (403, "id_missing")
    assert refusal(WHATSAPP_TEXT, key(("app-a", None, "FILL")), b"").reason == "id_missing"


def test_ids_elsewhere_are_checked_and_never_forced() -> None:
    k = key(("app-a", None, "FORCE"))
    body = {"messages": [{"content": {"text": "x", "meta": [{"ApplicationID": "app-b"}]}}]}
    r = refusal(SEND_SMS, k, body)
    assert (r.status, r.reason, r.field) == (403, "id_out_of_scope", "messages[0].content.meta[0].ApplicationID")
    body["messages"][0]["content"]["meta"][0]["ApplicationID"] = "app-a"
    forced = run(SEND_SMS, k, body)
    assert doc(forced)["messages"][0]["content"]["meta"] == [{"ApplicationID": "app-a"}]
    assert [p.where for p in forced.places] == ["$.messages[0].options.platform", "$.messages[0].content.meta[0]"]


def test_ids_none_endpoints_check_what_they_carry() -> None:
    k = key(("app-a", "ent-1", "FILL"))
    plain = {"topic": "x", "channel": "SMS"}
    decision = run(CCAAS, k, plain)
    assert not decision.changed and decision.body == json.dumps(plain).encode()
    assert decision.entry == k.platform[0]
    assert run(CCAAS, k, {"deep": [[{"x": {"entityId": "ent-1"}}]]}).entity_ids == {"ent-1"}
    r = refusal(CCAAS, k, {"deep": [[{"x": {"entityId": "ent-2"}}]]})
    assert (r.reason, r.field) == ("id_out_of_scope", "deep[0][0].x.entityId")
    assert refusal(CCAAS, k, query=b"applicationId=app-b").field == "applicationId"


def test_id_names_are_case_insensitive_in_json() -> None:
    for name in ("ApplicationID", "APPLICATIONID", "applicationid", "appl\u0131cationId", "\uff41pplicationId"):
        r = refusal(CCAAS, key(("app-a", None)), {"x": {name: "app-b"}})
        assert (r.reason, r.field) == ("id_out_of_scope", f"x.{name}")
    assert refusal(CREATE_CALL, key(("app-a", None)), {"platform": {"ApplicationId": "app-a"}}).reason == "id_name_case"


@pytest.mark.parametrize("raw", [
    b'{"x":{"\\u0061pplicationId":"app-b"}}',  # an escaped letter
    b'{"x":{"appl\xc4\xb1cationId":"app-b"}}',  # raw UTF-8 dotless i
    b'{"applicationId":"app-a","x":{"ApplicationId":"app-b"}}',  # an exact spelling next to a variant
    b'{"text":"applicationId","x":{"APPLICATIONID":"app-b"}}',
    b'{"x":[{"entityId":"e","applicationid":"app-b"}]}',
])
def test_id_names_are_found_however_the_body_is_written(raw: bytes) -> None:
    r = refusal(CCAAS, key(("app-a", None)), raw, content_type=JSON)
    assert (r.status, r.reason) == (403, "id_out_of_scope")


def test_null_counts_as_missing() -> None:
    assert refusal(CREATE_CALL, key(("app-a", None)), {"platform": {"applicationId": None}}).reason == "id_missing"
    filled = run(CREATE_CALL, key(("app-a", None, "FILL")), {"platform": {"applicationId": None, "x": 1}})
    assert filled.body == b'{"platform":{"applicationId":"app-a","x":1}}'
    assert run(CCAAS, key(("app-a", None)), {"applicationId": None}).application_ids == frozenset()


def test_rewrite_is_compact_keeps_order_and_text() -> None:
    body = {"z": 1, "messages": [{"text": "caf\u00e9 \u2603 \U0001f600", "n": 1.5, "big": 10**30}], "a": [True, None]}
    filled = run(SMS_ADVANCED, key(("app-a", None, "FILL")), body)
    assert filled.body == ('{"z":1,"messages":[{"text":"caf\u00e9 \u2603 \U0001f600","n":1.5,"big":' + str(10**30)
                           + ',"applicationId":"app-a"}],"a":[true,null]}').encode()


def test_unchanged_body_keeps_its_bytes() -> None:
    raw = b'{ "messages" : [ {"applicationId": "app-a", "x": 1.50} ] }\n'
    decision = run(SMS_ADVANCED, key(("app-a", None, "FILL")), raw, content_type=JSON)
    assert decision.body is raw and not decision.changed


# --- several entries --------------------------------------------------------------------------------------

def test_each_place_may_use_a_different_entry() -> None:
    k = key(("app-a", "ent-1"), ("app-b", None))
    body = {"messages": [{"applicationId": "app-a", "entityId": "ent-1"}, {"applicationId": "app-b", "entityId": "x"}]}
    decision = run(SMS_ADVANCED, k, body)
    assert decision.entry == PlatformEntry("", None, None)
    assert [p.entry for p in decision.places] == [k.platform[0], k.platform[1]]
    assert decision.application_ids == {"app-a", "app-b"} and decision.entity_ids == {"ent-1", "x"}
    body["messages"][1] = {"applicationId": "app-a", "entityId": "ent-2"}
    assert refusal(SMS_ADVANCED, k, body).reason == "id_out_of_scope"
    body["messages"][1] = {"applicationId": "app-a"}
    r = refusal(SMS_ADVANCED, k, body)
    assert (r.reason, r.field) == ("id_missing", "messages[1].entityId")


def test_entry_is_what_the_places_agree_on() -> None:
    k = key(("app-a", "ent-1"), ("app-a", "ent-2"))
    body = {"messages": [{"applicationId": "app-a", "entityId": "ent-1"},
                         {"applicationId": "app-a", "entityId": "ent-2"}]}
    assert run(SMS_ADVANCED, k, body).entry == PlatformEntry("", "app-a", None)
    assert run(SMS_ADVANCED, k, {"messages": [body["messages"][1]]}).entry == k.platform[1]
    assert run(CCAAS, k, {}).entry == PlatformEntry("", "app-a", None)


def test_fill_uses_the_action_entry_only() -> None:
    k = key(("app-b", "ent-9"), ("app-a", None, "FILL"))
    body = {"messages": [{"text": "x"}, {"applicationId": "app-b", "entityId": "ent-9"}]}
    decision = run(SMS_ADVANCED, k, body)
    assert [m["applicationId"] for m in doc(decision)["messages"]] == ["app-a", "app-b"]
    assert [p.entry for p in decision.places] == [k.platform[1], k.platform[0]]
    r = refusal(SMS_ADVANCED, k, {"messages": [{"applicationId": "app-b"}]})
    assert (r.reason, r.field) == ("id_missing", "messages[0].entityId")


def test_not_allowlisted_linked_key_is_403() -> None:
    r = refusal(None, key(("app-a", None)), query=b"applicationId=app-a")
    assert (r.status, r.reason) == (403, "not_allowlisted")


# --- primary keys --------------------------------------------------------------------------------------------

def test_primary_keys_collect_but_never_refuse_for_scope() -> None:
    body = {"messages": [{"text": "x"}, {"options": {"platform": {"applicationId": "app-b", "entityId": "e"}}}],
            "deep": {"ENTITYID": "e2"}}
    decision = run(SEND_SMS, PRIMARY, body, query=b"applicationId=app-c")
    assert not decision.changed and decision.entry is None
    assert decision.application_ids == {"app-b", "app-c"} and decision.entity_ids == {"e", "e2"}
    assert [p.where for p in decision.places] == ["query", "$.messages[1].options.platform", "$.deep"]
    assert run(None, PRIMARY, body).application_ids == {"app-b"}


@pytest.mark.parametrize(("content_type", "encoding", "raw"), [
    (b"application/xml", None, b"<request><applicationId>x</applicationId></request>"),
    (b"text/plain", None, b"applicationId=x"),
    (None, None, b'{"applicationId":"x"}'),
    (JSON, b"gzip", b"\x1f\x8b\x08\x00"),
    (JSON, b"identity", b'{"applicationId":"x"}'),
    (b"application/json; charset=utf-16", None, '{"applicationId":"x"}'.encode("utf-16")),
    (b"multipart/form-data", None, b"--x\r\n"),
    (b"application/json; charset=\"utf-8", None, b"{}"),
    (b"multipart/form-data; boundary=b", None,
     b'--b\r\nContent-Disposition: form-data; name="text"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
     b'aGk=\r\n--b--\r\n'),
])
def test_uninspectable_bodies(content_type: bytes | None, encoding: bytes | None, raw: bytes) -> None:
    r = refusal(CCAAS, key(("app-a", None)), raw, content_type=content_type, content_encoding=encoding)
    assert (r.status, r.reason) == (415, "uninspectable_body")
    decision = run(CCAAS, PRIMARY, raw, query=b"applicationId=app-q", content_type=content_type,
                   content_encoding=encoding)
    assert decision.body is raw and decision.application_ids == {"app-q"}


def test_needs_body() -> None:
    linked = key(("app-a", None))
    for content_type in (JSON, b"application/xml", None, b"text/plain"):
        assert scope.needs_body(CCAAS, linked, content_type)
    assert scope.needs_body(None, PRIMARY, b"application/json; charset=UTF-8")
    assert scope.needs_body(None, PRIMARY, b"application/problem+json")
    assert scope.needs_body(None, PRIMARY, FORM)
    assert scope.needs_body(None, PRIMARY, b"multipart/form-data; boundary=abc")
    assert not scope.needs_body(None, PRIMARY, b"application/xml")
    assert not scope.needs_body(None, PRIMARY, None)
    assert not scope.needs_body(None, PRIMARY, b"application/octet-stream")
    assert not scope.needs_body(None, PRIMARY, JSON, b"gzip")


# --- ambiguity -------------------------------------------------------------------------------------------------

DEEP = b'{"a":' * 64 + b"1" + b"}" * 64


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"applicationId":"app-a","applicationId":"app-b"}', "duplicate_key"),
    (b'{"x":{"text":"a","text":"b"}}', "duplicate_key"),
    (b'{"applicationId":"app-a","ApplicationId":"app-a"}', "duplicate_id"),
    (b'{"n":NaN}', "non_finite_number"),
    (b'{"n":Infinity}', "non_finite_number"),
    (b'{"n":-Infinity}', "non_finite_number"),
    (b'{"n":1e999}', "number_out_of_range"),
    (b'{"t":"\xff"}', "invalid_utf8"),
    ('{"applicationId":"x"}'.encode("utf-16"), "invalid_utf8"),
    (b'\xef\xbb\xbf{"applicationId":"app-a"}', "bom"),
    (b'{"applicationId":"app-a"}{"applicationId":"app-b"}', "trailing_data"),
    (b'{"applicationId":"app-a"} x', "trailing_data"),
    (b'{"applicationId":"app-a",}', "invalid_json"),
    (b"   ", "invalid_json"),
    (b'{"n":' + b"1" * 5000 + b"}", "number_out_of_range"),
    (b'{"a":' * 65 + b"1" + b"}" * 65, "too_deep"),
    (b"[" * 65 + b"]" * 65, "too_deep"),
    (b"[" * 100000 + b"]" * 100000, "too_deep"),
    (b'{"applicationId":7}', "id_not_string"),
    (b'{"x":[{"entityId":true}]}', "id_not_string"),
    (b'{"applicationId":["app-a"]}', "id_not_string"),
    (b'{"applicationId":{"id":"app-a"}}', "id_not_string"),
    (b'{"t":"\\ud800"}', "lone_surrogate"),
])
def test_json_ambiguity_is_400_for_every_key(raw: bytes, reason: str) -> None:
    for k in (key(("app-a", None, "FILL")), PRIMARY):
        r = refusal(CCAAS, k, raw, content_type=JSON)
        assert (r.status, r.reason) == (400, reason)


def test_nesting_of_64_and_escaped_surrogate_pairs_are_fine() -> None:
    assert not run(CCAAS, key(("app-a", None)), DEEP, content_type=JSON).changed
    assert run(CCAAS, key(("app-a", None)), b'{"t":"\\ud83d\\ude00"}', content_type=JSON).places == []


# --- forms -------------------------------------------------------------------------------------------------------

def multipart(*fields: tuple[str, str], boundary: str = "XyZ") -> tuple[bytes, bytes]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode() for n, v in fields
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}".encode()


def form_fields(raw: bytes, content_type: bytes) -> list[tuple[str, str]]:
    """Read a multipart body with the standard library's parser, independently of keyscope's."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + raw)
    return [(part.get_param("name", header="content-disposition"), part.get_content()) for part in message.iter_parts()]


def test_multipart_check_fill_and_force() -> None:
    raw, ct = multipart(("from", "a@b.c"), ("to", "d@e.f"), ("text", "Hi\r\n-- XyZ\r\n"))
    r = refusal(EMAIL_SEND, key(("app-a", None)), raw, content_type=ct)
    assert (r.reason, r.field) == ("id_missing", "applicationId")
    filled = run(EMAIL_SEND, key(("app-a", "ent-1", "FILL")), raw, content_type=ct)
    assert form_fields(filled.body, ct) == [("from", "a@b.c"), ("to", "d@e.f"), ("text", "Hi\r\n-- XyZ\r\n"),
                                            ("applicationId", "app-a"), ("entityId", "ent-1")]
    assert not run(EMAIL_SEND, key(("app-a", "ent-1", "FILL")), filled.body, content_type=ct).changed
    raw, ct = multipart(("applicationId", "app-b"), ("text", "Hi"), ("entityId", "e"))
    forced = run(EMAIL_SEND, key(("app-a", None, "FORCE")), raw, content_type=ct)
    assert form_fields(forced.body, ct) == [("applicationId", "app-a"), ("text", "Hi"), ("entityId", "e")]
    r = refusal(EMAIL_SEND, key(("app-a", None)), raw, content_type=ct)
    assert (r.status, r.reason, r.field) == (403, "id_out_of_scope", "applicationId")
    assert run(EMAIL_SEND, PRIMARY, raw, content_type=ct).application_ids == {"app-b"}


@pytest.mark.parametrize(("raw", "reason"), [
    (multipart(("applicationId", "a"), ("applicationId", "a"))[0], "duplicate_id"),
    (multipart(("applicationId", "a"), ("APPLICATIONID", "a"))[0], "duplicate_id"),
    (multipart(("applicationId[]", "a"))[0], "id_array"),
    (b"preamble\r\n" + multipart(("a", "b"))[0], "bad_multipart"),
    (multipart(("a", "b"))[0][:-9], "bad_multipart"),
    (multipart(("a", "b"))[0] + b"epilogue", "bad_multipart"),
    (multipart(("text", "x\r\n--XyZ-more"), ("applicationId", "a"))[0], "bad_multipart"),  # boundary inside a value
    (b'--XyZ\r\nContent-Disposition: form-data; name*=utf-8\'\'applicationId\r\n\r\nb\r\n--XyZ--', "bad_multipart"),
    (b'--XyZ\r\nContent-Disposition: form-data; name="applic\\ationId"\r\n\r\nb\r\n--XyZ--', "bad_multipart"),
    (b'--XyZ\r\nContent-Disposition: form-data; name="a"; name="b"\r\n\r\nb\r\n--XyZ--', "bad_multipart"),
    (b'--XyZ\r\nContent-Disposition: form-data\r\n\r\nb\r\n--XyZ--', "bad_multipart"),
    (b'--XyZ\r\nX: 1\r\n\r\nb\r\n--XyZ--', "bad_multipart"),
    (b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n folded\r\n\r\nb\r\n--XyZ--', "bad_multipart"),
    (b'--XyZ\nContent-Disposition: form-data; name="a"\n\nb\n--XyZ--', "bad_multipart"),
    (b'--XyZ\r\nContent-Disposition: form-data; name="applicationId"\r\n--XyZ--\r\n', "bad_multipart"),
])
def test_multipart_ambiguity_is_400(raw: bytes, reason: str) -> None:
    ct = b"multipart/form-data; boundary=XyZ"
    for k in (key(("app-a", None, "FILL")), PRIMARY):
        r = refusal(EMAIL_SEND, k, raw, content_type=ct)
        assert (r.status, r.reason) == (400, reason)


def test_urlencoded_form() -> None:
    k = key(("app-a", None))
    assert run(CCAAS, k, b"text=hi&applicationId=app-a", content_type=FORM).application_ids == {"app-a"}
    r = refusal(CCAAS, k, b"text=hi&Applicationid=app-b", content_type=FORM + b"; charset=UTF-8")
    assert (r.reason, r.field) == ("id_out_of_scope", "Applicationid")
    assert refusal(CCAAS, k, b"applicationId=app-a&applicationId=app-a", content_type=FORM).reason == "duplicate_id"
    assert refusal(CCAAS, PRIMARY, b"a=1;applicationId=app-b", content_type=FORM).reason == "semicolon"
    assert refusal(CCAAS, PRIMARY, b"a=%zz", content_type=FORM).reason == "bad_escape"


def test_urlencoded_form_fill_and_force() -> None:
    filled = run(EMAIL_SEND, key(("app-a", "ent-1", "FILL")), b"from=a%40b.c&text=Hi+there", content_type=FORM)
    assert filled.body == b"from=a%40b.c&text=Hi+there&applicationId=app-a&entityId=ent-1"
    forced = run(EMAIL_SEND, key(("app-a", None, "FORCE")), b"applicationId=app-b&text=x", content_type=FORM)
    assert forced.body == b"applicationId=app-a&text=x"


# --- properties ----------------------------------------------------------------------------------------------------

APPS = ["app-a", "app-b", "app-c"]
ENTS = ["ent-1", "ent-2"]
NAMES = {"applicationId": ["applicationId", "ApplicationID", "APPLICATIONID"], "entityId": ["entityId", "EntityId"]}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.text(max_size=5))
entries = st.tuples(st.sampled_from([*APPS, None]), st.sampled_from([*ENTS, None])).filter(lambda e: e != (None, None))


@st.composite
def keys(draw: st.DrawFn) -> ApiKey:
    chosen = draw(st.lists(entries, min_size=1, max_size=3, unique=True))
    action_at = draw(st.sampled_from([None, *range(len(chosen))]))
    action = draw(st.sampled_from(["FILL", "FORCE"]))
    return key(*[(*e, action) if i == action_at else e for i, e in enumerate(chosen)])


@st.composite
def id_objects(draw: st.DrawFn, children: st.SearchStrategy[Any], exact: bool = False) -> dict[str, Any]:
    names = st.sampled_from(["a", "b", "text", "content", "x"])
    obj: dict[str, Any] = draw(st.dictionaries(names, children, max_size=3))
    for kind, values in (("applicationId", APPS), ("entityId", ENTS)):
        if draw(st.booleans()):
            name = kind if exact else draw(st.sampled_from(NAMES[kind]))
            obj[name] = draw(st.sampled_from([*values, None]))
    return obj


documents = st.recursive(scalars, lambda children: st.lists(children, max_size=3) | id_objects(children), max_leaves=8)


def reference_places(document: Any) -> list[dict[str, str | None]]:
    """Every object's ids, found with a plain stack walk and str.lower()."""
    places, stack = [], [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ids = {k.lower(): v for k, v in node.items() if k.lower() in ("applicationid", "entityid")}
            if ids:
                places.append({"applicationId": ids.get("applicationid"), "entityId": ids.get("entityid")})
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return places


def agrees(entry: PlatformEntry, ids: dict[str, str | None]) -> bool:
    return all(ids.get(kind) in (None, value) for kind, value in
               (("applicationId", entry.application_id), ("entityId", entry.entity_id)) if value is not None)


def requires(entry: PlatformEntry, ids: dict[str, str | None]) -> bool:
    return all(ids.get(kind) == value for kind, value in
               (("applicationId", entry.application_id), ("entityId", entry.entity_id)) if value is not None)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), documents, max_size=3), keys())
def test_permits_iff_every_planted_id_is_in_scope(document: dict[str, Any], k: ApiKey) -> None:
    expected = all(any(agrees(e, place) for e in k.platform) for place in reference_places(document))
    event(f"expected permit: {expected}")
    try:
        decision = run(CCAAS, k, document)
    except Refusal as r:
        assert (r.status, r.reason) == (403, "id_out_of_scope")
        assert not expected
        return
    assert expected
    assert not decision.changed
    planted = reference_places(document)
    assert decision.application_ids == {p["applicationId"] for p in planted if p["applicationId"]}


options = st.fixed_dictionaries({}, optional={"platform": id_objects(scalars, exact=True)})
message = st.fixed_dictionaries({"content": documents}, optional={"options": options})
messages = st.lists(message, min_size=1, max_size=4)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, keys())
def test_declared_locations_fill_force_and_a_second_inspect(batch: list[dict[str, Any]], k: ApiKey) -> None:
    document = {"messages": batch}
    action = next((e for e in k.platform if e.action), None)
    expected = True
    for message in batch:
        platform = message.get("options", {}).get("platform", {})
        declared = {"applicationId": platform.get("applicationId"), "entityId": platform.get("entityId")}
        if not (any(requires(e, declared) for e in k.platform) or action is not None and (
                action.action == "FORCE" or agrees(action, declared))):
            expected = False
        expected = expected and all(any(agrees(e, p) for e in k.platform) for p in reference_places(message["content"]))
    event(f"expected permit: {expected}, action: {action and action.action}")
    try:
        decision = run(SEND_SMS, k, document)
    except Refusal as r:
        assert r.status == 403 and r.reason in ("id_out_of_scope", "id_missing")
        assert not expected
        return
    assert expected
    again = run(SEND_SMS, k, decision.body, content_type=JSON)
    assert not again.changed and again.body == decision.body
    for message in json.loads(decision.body)["messages"]:
        platform = message.get("options", {}).get("platform", {})
        assert any(requires(e, platform) for e in k.platform)


_FRAGMENTS = [b'{"', b'"}', b"[", b"]", b"{", b"}", b":", b",", b'"applicationId"', b'"ApplicationId"', b'"app-a"', b"null",
              b"1e999", b"NaN", b"\\u0061", b"\\ud800", b"\xff", b"\xef\xbb\xbf", b"&", b"=", b";", b"%", b"%61",
              b"applicationId", b"entityId", b"--XyZ", b"\r\n", b"Content-Disposition: form-data; name=", b'"a"']
_CONTENT_TYPES = [JSON, FORM, b"multipart/form-data; boundary=XyZ", b"application/xml", None]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=16).map(b"".join), st.sampled_from(_CONTENT_TYPES),
       st.sampled_from([SEND_SMS, EMAIL_SEND, SMS_LOGS, CCAAS]), st.sampled_from([PRIMARY, key(("app-a", None, "FILL")),
                                                                                 key(("app-a", "ent-1", "FORCE"))]))
def test_any_body_is_decided_or_refused_never_crashes(raw: bytes, content_type: bytes | None, endpoint: Endpoint,
                                                      k: ApiKey) -> None:
    try:
        decision = run(endpoint, k, raw, query=raw[:20].replace(b"\xff", b""), content_type=content_type)
    except Refusal as r:
        assert r.status in (400, 403, 415) and r.reason
        event(f"refused {r.status}")
        return
    event("decided, changed" if decision.changed else "decided")
    again = run(endpoint, k, decision.body, query=decision.query, content_type=content_type)
    assert not again.changed
