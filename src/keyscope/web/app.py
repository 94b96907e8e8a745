"""The web interface: server-rendered pages for applications, entities, keys, the allowlist and the explainer.

It is served on its own listener (`keyscope serve --admin-listen`, loopback by default), never on the traffic
port. Every write goes through the management API in-process (`admin.call`, as the CLI does) with the admin
token the operator signed in with, so a form is accepted or refused by exactly the rules an HTTP client meets;
reads that the API cannot express (search, cascade previews) go to the same store. The forms work without
JavaScript; one small script adds the copy button of a new key's secret.
"""

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from keyscope.allowlist.table import Endpoint
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store.base import Store
from keyscope.web.explainer import ROUTES as EXPLAINER_ROUTES
from keyscope.web.keys import ROUTES as KEY_ROUTES
from keyscope.web.records import ROUTES as RECORD_ROUTES
from keyscope.web.session import Sessions
from keyscope.web.ui import HERE, Handler, Ui, guarded, home, signin, signin_page, signout


def create_web_app(
    store: Store,
    *,
    admin_token: str,
    endpoints: Sequence[Endpoint],
    authenticator: KeyAuthenticator | None = None,
    on_change: Callable[[], Any] | None = None,
    idle_timeout: float | None = None,
    secure_cookies: bool | None = None,
    trusted_proxies: Sequence[str] = (),
    max_body_size: int = 1024 * 1024,
    limits: Limits = DEFAULT_LIMITS,
    clock: Callable[[], float] | None = None,
    open_store: bool = False,
) -> Starlette:
    """The web interface over `store`, which its caller opens and closes unless `open_store` is set (then the
    app's lifespan does, for an interface served on its own).

    Pass the gateway's `authenticator` and `on_change` when serving beside it, so that a change made here
    takes effect at once in the gateway's caches, exactly as one made through the management API does.
    """
    if not admin_token:
        raise ValueError("the web interface needs an admin token to sign in with")
    session_options: dict[str, Any] = {"secure": secure_cookies}
    if idle_timeout is not None:
        session_options["idle_timeout"] = idle_timeout
    if clock is not None:
        session_options["clock"] = clock
    ui = Ui(
        store,
        admin_token=admin_token,
        endpoints=endpoints,
        authenticator=authenticator or KeyAuthenticator(store),
        on_change=on_change,
        sessions=Sessions(**session_options),
        trusted_proxies=trusted_proxies,
        max_body_size=max_body_size,
        limits=limits,
    )

    def open_route(path: str, handler: Handler, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            return await handler(ui, request)

        return Route(path, endpoint, methods=methods)

    routes = [
        open_route("/signin", signin_page, ["GET"]),
        open_route("/signin", signin, ["POST"]),
        Route("/signout", guarded(ui, signout), methods=["POST"]),
        Route("/", guarded(ui, home), methods=["GET"]),
        *[Route(path, guarded(ui, handler), methods=[method]) for path, method, handler in RECORD_ROUTES],
        *[Route(path, guarded(ui, handler), methods=[method]) for path, method, handler in KEY_ROUTES],
        *[Route(path, guarded(ui, handler), methods=[method]) for path, method, handler in EXPLAINER_ROUTES],
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=_store_lifespan(store) if open_store else None)
    app.state.ui = ui
    return app


def _store_lifespan(store: Store) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        try:
            yield
        finally:
            await store.close()

    return lifespan
