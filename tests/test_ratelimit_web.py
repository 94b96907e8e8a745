"""Rate limits and shadow mode in the web interface and the CLI: the forms write what the management API
validates, and the pages show it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from web_helpers import Web, secret_of, texts

from keyscope.core.keys import hash_secret
from keyscope.core.ratelimits import RateLimit

pytestmark = pytest.mark.anyio


async def test_a_key_with_limits_and_shadow_mode_from_the_forms(signed_in: Web) -> None:  # noqa: F811
    await signed_in.post("/applications", applicationId="app-a")
    response = await signed_in.post("/keys", name="limited", app_0="app-a", rateLimits="100/s\n5000/day",
                                    shadow="on")
    assert response.status_code == 200, response.text
    key = await signed_in.store.find_key_by_hash(hash_secret(secret_of(response.text)))
    assert key is not None
    assert key.rate_limits == (RateLimit(100, "second"), RateLimit(5000, "day")) and key.enforce is False
    page = (await signed_in.client.get(f"/keys/show?id={key.id}")).text
    assert "100/second, 5000/day" in page and "shadow mode" in page
    response = await signed_in.post("/keys/settings", id=key.id, name="limited", rateLimits="7/minute")
    assert response.status_code == 303
    changed = await signed_in.store.get_key(key.id)
    assert changed.rate_limits == (RateLimit(7, "minute"),) and changed.enforce is True
    response = await signed_in.post("/keys/settings", id=key.id, name="limited", rateLimits="7/week")
    assert response.status_code == 400 and texts(response.text, "field-problem")
    assert (await signed_in.store.get_key(key.id)).rate_limits == (RateLimit(7, "minute"),)


async def test_an_application_s_limits_from_its_page(signed_in: Web) -> None:  # noqa: F811
    await signed_in.post("/applications", applicationId="app-a", applicationName="A")
    response = await signed_in.post("/applications/limits", id="app-a", rateLimits="10/s, 1000/h")
    assert response.status_code == 303
    app = await signed_in.store.get_application("app-a")
    assert app.rate_limits == (RateLimit(10, "second"), RateLimit(1000, "hour")) and app.application_name == "A"
    assert "10/second, 1000/hour" in (await signed_in.client.get("/applications/show?id=app-a")).text
    response = await signed_in.post("/applications/limits", id="app-a", rateLimits="")
    assert response.status_code == 303 and (await signed_in.store.get_application("app-a")).rate_limits == ()


def test_the_cli_sets_and_shows_limits(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    env["KEYSCOPE_STORE"] = f"sqlite:///{tmp_path / 'k.db'}"

    def keyscope(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keyscope.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    assert keyscope("init").returncode == 0
    assert keyscope("apps", "create", "app-a", "--rate-limit", "100/s").returncode == 0
    made = keyscope("--json", "keys", "create", "--name", "k", "--application", "app-a", "--rate-limit", "5/s",
                    "--rate-limit", "100/d", "--no-enforce")
    assert made.returncode == 0, made.stderr
    assert '"enforce": false' in made.stdout and '"per": "day"' in made.stdout
    updated = keyscope("--json", "keys", "update", "k", "--no-rate-limits", "--enforce")
    assert updated.returncode == 0 and "rateLimits" not in updated.stdout and "enforce" not in updated.stdout
    refused = keyscope("keys", "update", "k", "--rate-limit", "5/week")
    assert refused.returncode == 2 and "expected REQUESTS/PERIOD" in refused.stderr
    limited = keyscope("apps", "limit", "app-a", "--rate-limit", "3/min")
    assert limited.returncode == 0 and "minute" in limited.stdout
    assert "rateLimits" not in keyscope("--json", "apps", "limit", "app-a").stdout
