"""What every page of the web interface shares: the `Ui` handed to each handler, sessions and sign-in, forms,
the management API's answers, redirects and security headers. The pages (`records`, `keys`, `explainer`)
build on it and `app` puts them together, so no page imports the app that routes to it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keyscope.allowlist.table import Endpoint
from keyscope.control import admin
from keyscope.core.errors import describe
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store.base import Store, StoreUnavailable
from keyscope.web.session import Session, Sessions, SignInThrottle, csrf_ok, same_origin

HERE = Path(__file__).parent
audit_log = logging.getLogger("keyscope.audit")  # sign-ins, which name the `web:<sign-in>` of later changes
MAX_FORM = 2 * 1024 * 1024  # the explain form carries a request body of up to the gateway's default limit
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class FormError(Exception):
    """The submitted form is unusable as a whole (not a field error): answered with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Answer:
    """The management API's answer to one write: `problems` maps a field (or "") to what is wrong with it."""

    status: int
    doc: Any
    headline: str = ""
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def problem(self, name: str) -> str | None:
        """The message for a form field, including the API's indexed names (`allowedIPs[0]` for `allowedIPs`)."""
        for field_name, message in self.problems.items():
            if field_name == name or field_name.startswith((name + "[", name + ".")):
                return message
        return None


class Ui:
    """What every page handler needs: the store, the in-process management API, sessions and templates."""

    def __init__(
        self,
        store: Store,
        *,
        admin_token: str,
        endpoints: Sequence[Endpoint],
        authenticator: KeyAuthenticator,
        on_change: Callable[[], Any] | None,
        sessions: Sessions,
        trusted_proxies: Sequence[str],
        max_body_size: int,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.endpoints = list(endpoints)
        self.sessions = sessions
        self.throttle = SignInThrottle(clock=sessions.clock)
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_body_size = max_body_size
        self.limits = limits
        self._token = admin_token
        self._admin = admin.create_app(store, admin_token=admin_token, authenticator=authenticator, on_change=on_change)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["pretty"] = lambda doc: json.dumps(doc, indent=2, ensure_ascii=False)

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    async def api(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None, *, by: Request
    ) -> Answer:
        """The management API's answer, called as the admin for `by`'s session (the audit trail's principal)."""
        session: Session = by.state.session
        status, _, raw = await admin.call(self._admin, method, path, body, query, self._token, session.principal)
        doc = json.loads(raw) if raw else None
        if 200 <= status < 300:
            return Answer(status, doc)
        said = describe(status, raw)
        problems = {name: "; ".join(messages) for name, messages in said.fields}
        return Answer(status, doc, said.headline or f"HTTP {status}", problems)

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "session", None)
        flash = session.flash[:] if session is not None else []
        if session is not None:
            session.flash.clear()
        page = self.templates.get_template(template).render(
            request=request, session=session, flash=flash, url=_url, **context
        )
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)


def _url(path: str, **query: Any) -> str:
    given = {name: value for name, value in query.items() if value not in (None, "")}
    return f"{path}?{urlencode(given)}" if given else path


def redirect(path: str, **query: Any) -> RedirectResponse:
    return RedirectResponse(_url(path, **query), status_code=303, headers=SECURITY_HEADERS)


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form, strictly: one value per name (the last of repeated checkboxes is never needed)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormError(415, "forms must be sent as application/x-www-form-urlencoded")
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM:
            raise FormError(413, "the form is too large")
        chunks.append(chunk)
    try:
        pairs = parse_qsl(b"".join(chunks).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "the form is not valid UTF-8 urlencoded data") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise FormError(400, f"the form field {name!r} is given more than once")
        form[name] = value.replace("\r\n", "\n")
    return form


Handler = Callable[[Ui, Request], Awaitable[Response]]


def guarded(ui: Ui, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page that needs a signed-in session; a POST also needs the same origin and the session's CSRF token."""

    async def endpoint(request: Request) -> Response:
        session = ui.sessions.get(request)
        if session is None:
            if request.method == "GET":
                query = request.url.query
                return redirect("/signin", next=request.url.path + (f"?{query}" if query else ""))
            return ui.render(request, "signin.html", 401, error="Your session has ended: sign in again.")
        request.state.session = session
        try:
            if request.method == "POST":
                form = await read_form(request)
                if not same_origin(request) or not csrf_ok(session, form.get("csrf")):
                    message = "The form's CSRF token is missing or wrong: reload the page and try again."
                    return ui.render(request, "error.html", 403, message=message)
                request.state.form = form
            return await handler(ui, request)
        except FormError as exc:
            return ui.render(request, "error.html", exc.status, message=exc.message)
        except StoreUnavailable:
            return ui.render(request, "error.html", 503, message="The store is unavailable; try again shortly.")

    return endpoint


async def signin_page(ui: Ui, request: Request) -> Response:
    if ui.sessions.get(request) is not None:
        return redirect("/applications")
    return ui.render(request, "signin.html", next=_safe_next(request.query_params.get("next")))


async def signin(ui: Ui, request: Request) -> Response:
    try:
        form = await read_form(request)
    except FormError as exc:
        return ui.render(request, "error.html", exc.status, message=exc.message)
    if not same_origin(request):
        return ui.render(request, "signin.html", 403, error="Sign in from this interface's own page.")
    client = request.client.host if request.client else ""
    if ui.throttle.blocked(client):
        return ui.render(request, "signin.html", 429, error="Too many failed sign-ins: wait a minute.")
    if not ui.token_matches(form.get("token", "")):
        ui.throttle.failed(client)
        return ui.render(request, "signin.html", 401, error="Wrong admin token.", next=_safe_next(form.get("next")))
    response = redirect(_safe_next(form.get("next")) or "/applications")
    session = ui.sessions.start(request, response)
    audit_log.info("%s signed in from %s", session.principal, client or "unknown",
                   extra={"fields": {"principal": session.principal, "action": "session.signin", "client": client}})
    return response


async def signout(ui: Ui, request: Request) -> Response:
    response = redirect("/signin")
    ui.sessions.end(request, response)
    return response


def _safe_next(target: str | None) -> str:
    """Only a path of this interface: never another host (`//evil`, `/\\evil`, `https:`)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\\" in target:
        return ""
    return target


async def home(ui: Ui, request: Request) -> Response:
    return redirect("/applications")
