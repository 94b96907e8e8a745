"""Versioned schema migrations, shared by the SQLite and PostgreSQL stores.

Each migration is applied once, in order, inside the transaction that records it in `schema_version`, so a
crash mid-migration leaves the previous version intact. The SQL is portable: ids and times are TEXT (times
in one fixed, sortable ISO-8601 UTC form), booleans INTEGER 0/1, allowed IPs JSON TEXT, secret hashes
lowercase hex. The few dialect differences are `{placeholders}` filled from `DIALECTS`.

Key entries reference applications and entities *without* ON DELETE CASCADE on purpose: removing an entry
can leave a key with none, and only the store's cascade may decide that (it disables the key). A delete that
bypasses it fails on the foreign key instead of quietly turning a linked key into a primary one.
"""

from __future__ import annotations

from dataclasses import dataclass

# `ident` compares and sorts ids byte-wise on both databases (PostgreSQL's default collation may not), so
# lists come out in the same order from either store.
DIALECTS: dict[str, dict[str, str]] = {
    "sqlite": {"ident": "TEXT", "counter": "INTEGER"},
    "postgresql": {"ident": 'TEXT COLLATE "C"', "counter": "BIGINT"},
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]

    def sql(self, dialect: str) -> list[str]:
        names = DIALECTS[dialect]
        return [statement.format(**names) for statement in self.statements]


VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "applications, entities, associations, keys and the revision counter",
        (
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value {counter} NOT NULL)",
            "INSERT INTO meta (name, value) VALUES ('revision', 0)",
            "CREATE TABLE applications ("
            " application_id {ident} PRIMARY KEY,"
            " application_name TEXT)",
            "CREATE TABLE entities ("
            " entity_id {ident} PRIMARY KEY,"
            " entity_name TEXT)",
            "CREATE TABLE associations ("
            " resource_type {ident} NOT NULL,"
            " channel {ident} NOT NULL,"
            " resource_id {ident} NOT NULL,"
            " application_id {ident} NOT NULL REFERENCES applications (application_id) ON DELETE CASCADE,"
            " entity_id {ident} REFERENCES entities (entity_id) ON DELETE CASCADE,"
            " PRIMARY KEY (resource_type, channel, resource_id))",
            "CREATE INDEX associations_application ON associations (application_id)",
            "CREATE INDEX associations_entity ON associations (entity_id)",
            "CREATE TABLE api_keys ("
            " id {ident} PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " secret_hash TEXT NOT NULL,"
            " prefix TEXT NOT NULL,"
            " allowed_ips TEXT NOT NULL,"
            " valid_from TEXT NOT NULL,"
            " valid_to TEXT NOT NULL,"
            " enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),"
            " created_at TEXT NOT NULL,"
            " last_used_at TEXT)",
            "CREATE UNIQUE INDEX api_keys_secret_hash ON api_keys (secret_hash)",
            "CREATE TABLE key_entries ("
            " key_id {ident} NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,"
            " position INTEGER NOT NULL,"
            " entry_key TEXT NOT NULL UNIQUE,"
            " application_id {ident} REFERENCES applications (application_id),"
            " entity_id {ident} REFERENCES entities (entity_id),"
            " action TEXT CHECK (action IN ('FILL', 'FORCE')),"
            " CHECK (application_id IS NOT NULL OR entity_id IS NOT NULL),"
            " PRIMARY KEY (key_id, position))",
            "CREATE INDEX key_entries_application ON key_entries (application_id)",
            "CREATE INDEX key_entries_entity ON key_entries (entity_id)",
        ),
    ),
    Migration(
        2,
        "the audit trail: one record per management change, indexed by every object it names",
        (
            # seq comes from this counter, bumped in the change's own transaction (no gaps, one order on both
            # databases); the record's JSON holds its objects, details and what a cascade removed
            "INSERT INTO meta (name, value) VALUES ('audit', 0)",
            "CREATE TABLE audit_log ("
            " seq {counter} PRIMARY KEY,"
            " at TEXT NOT NULL,"
            " principal TEXT NOT NULL,"
            " action TEXT NOT NULL,"
            " record TEXT NOT NULL)",
            "CREATE TABLE audit_objects ("
            " object_id {ident} NOT NULL,"
            " kind {ident} NOT NULL,"
            " seq {counter} NOT NULL,"
            " PRIMARY KEY (object_id, kind, seq))",
            "CREATE INDEX audit_objects_seq ON audit_objects (seq)",
        ),
    ),
    Migration(
        3,
        "rate limits on keys and applications, and a key's enforce flag (shadow mode)",
        (
            # JSON TEXT: [{"requests": N, "per": "second|minute|hour|day"}, ...] (keyscope.core.ratelimits)
            "ALTER TABLE api_keys ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE api_keys ADD COLUMN enforce INTEGER NOT NULL DEFAULT 1 CHECK (enforce IN (0, 1))",
            "ALTER TABLE applications ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '[]'",
        ),
    ),
    Migration(
        4,
        "deletion events: the outbox written with each deletion, and each receiver's delivery state",
        (
            # seq comes from this counter, bumped in the deleting transaction (which holds the store's write
            # lock), so events commit in seq order and a deliverer reading `seq > done_seq` never skips one
            "INSERT INTO meta (name, value) VALUES ('events', 0)",
            # body: the JSON POSTed, byte for byte (signed as stored); object: `kind:id`, for listing
            "CREATE TABLE event_outbox ("
            " seq {counter} PRIMARY KEY,"
            " id {ident} NOT NULL UNIQUE,"
            " at TEXT NOT NULL,"
            " type {ident} NOT NULL,"
            " object {ident} NOT NULL,"
            " body TEXT NOT NULL)",
            "CREATE INDEX event_outbox_object ON event_outbox (object, seq)",
            # one row per receiver URL: every event up to done_seq is delivered; the lease (owner, lease_until)
            # says which instance delivers now; attempts/last_error/next_attempt_at the retries of the next one
            "CREATE TABLE event_targets ("
            " url {ident} PRIMARY KEY,"
            " done_seq {counter} NOT NULL,"
            " delivered {counter} NOT NULL,"
            " attempts INTEGER NOT NULL,"
            " last_error TEXT,"
            " last_attempt_at TEXT,"
            " next_attempt_at TEXT,"
            " delivered_at TEXT,"
            " owner TEXT,"
            " lease_until TEXT,"
            " seen_at TEXT NOT NULL,"
            " created_at TEXT NOT NULL)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version
