"""The differential suite's session: every reader that can run, the tee and one `keyscope serve`, started once.

Select or leave out the suite with `-m differential` / `-m "not differential"`. A reader whose runtime is
missing or that does not start is left out with a message (see test_differential_sanity.py's per-reader
test); with KEYSCOPE_REQUIRE_DIFFERENTIAL=1 (CI) that fails the suite instead.

For a hunt rather than a gate: KEYSCOPE_DIFFERENTIAL_EXAMPLES=10 multiplies the Hypothesis examples;
KEYSCOPE_DIFFERENTIAL_TALLY=1 records misreads instead of failing on the first and prints, at the end, how
often each reader misread what per test (and why keyscope refused the rest), with the first example of each;
KEYSCOPE_DIFFERENTIAL_GATEWAY_SRC=/path/to/src runs another keyscope (an older commit's `src/`) as the gateway.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .backends import REQUIRED, discover, start_all, stop_all
from .harness import World, seed, start_gateway
from .tee import Tee

_session: dict[str, World] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "differential: replays requests keyscope forwards to real backend parsers")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("differential")
    running, unavailable = start_all(discover(), folder)
    tee = gateway = None
    try:
        if REQUIRED and unavailable:
            pytest.fail(f"KEYSCOPE_REQUIRE_DIFFERENTIAL=1 but readers cannot run: {unavailable}")
        if not running:
            pytest.skip(f"no reader can run: {unavailable}")
        tee = Tee({reader.name: reader.port for reader in running}).start()
        gateway = start_gateway(tee.url, folder)
        built = World(running, unavailable, tee, gateway, seed(gateway))
        _session["world"] = _session["tally_world"] = built
        yield built
    finally:
        _session.pop("world", None)
        if gateway is not None:
            gateway.stop()
        if tee is not None:
            tee.stop()
        stop_all(running)


def pytest_runtest_call(item: pytest.Item) -> None:
    if "world" in _session:
        _session["world"].label = item.name


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if "world" in _session and _session["world"].record_only:
        _session["world"].collect_reasons()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    built = _session.get("tally_world")
    if not built or os.environ.get("KEYSCOPE_DIFFERENTIAL_TALLY") != "1":
        return
    terminalreporter.section("differential: what each reader misread (test, reader, kind: examples)")
    for (label, reader, kind), count in sorted(built.tally.items()):
        terminalreporter.write_line(f"{label:34} | {reader:10} | {kind:13} | {count}")
    terminalreporter.section("differential: the first example of each")
    for what, example in sorted(built.first_seen.items()):
        terminalreporter.write_line(f"{' '.join(what)}\n    {example[:900]}\n")
