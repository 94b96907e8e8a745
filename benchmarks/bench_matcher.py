"""Nanoseconds per match for keyscope's matcher and its peers, on the real endpoints.yaml.

Run: `python benchmarks/bench_matcher.py` (needs the `bench` extra). Not a test: it asserts nothing.

Workloads: static hit, parameterised hit, miss (unknown paths), method not allowed, near miss (one segment
changed, trailing slash, extra segment, empty segment) and a mixed stream of 10,000 requests (35% static
hits, 40% parameterised hits, 10% misses, 10% near misses, 5% wrong methods). Parameter values are fresh on
every request (half of them UUIDs), so no cache can answer them; http-router's lru_cache is bypassed.

Every router gets the same requests: keyscope the raw path as bytes (what ASGI's `raw_path` holds; the
"keyscope (str)" row gives it str), the peers the same path as str. Each peer is called the way its own
dispatcher calls it, and its answer is reduced to match / method not allowed / not found, so the agreement
check compares like with like. keyscope builds `Match.params` only when read, the peers eagerly: the
"keyscope + .params" row reads them on every match. Timings interleave the routers in short chunks and keep
the fastest round per chunk; a bare loop over the same requests is subtracted.
"""

from __future__ import annotations

import gc
import random
import string
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keyscope.allowlist import matcher as keyscope_matcher  # noqa: E402
from keyscope.allowlist.table import Endpoint, load  # noqa: E402

Request = tuple[str, str]  # (method, raw path as str)
Answer = tuple[str, str]  # ("match", template) | ("405", "") | ("404", "")
ROUNDS = 7
CHUNK = 100
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def fresh(rng: random.Random) -> str:
    """A new identifier: half of them UUIDs, as conversation and note ids are."""
    if rng.random() < 0.5:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(6, 24)))


def fill(template: str, rng: random.Random) -> str:
    return "/".join(fresh(rng) if s.startswith("{") else s for s in template.split("/"))


def workloads(endpoints: list[Endpoint], rng: random.Random) -> dict[str, list[Request]]:
    static = [e for e in endpoints if "{" not in e.path]
    params = [e for e in endpoints if "{" in e.path]
    methods: dict[str, set[str]] = defaultdict(set)
    for e in endpoints:
        methods[e.path].add(e.method)
    paths = sorted(methods)

    def not_allowed(path: str) -> str:
        return rng.choice([m for m in METHODS if m not in methods[path]])

    def near(path: str) -> str:
        segments = path.split("/")
        kind = rng.randrange(4)
        if kind == 0:
            i = rng.randrange(1, len(segments))
            segments[i] = segments[i][:-1] + "x" if not segments[i].startswith("{") else ""
            return fill("/".join(segments), rng)
        if kind == 1:
            return fill(path, rng) + "/"
        if kind == 2:
            return fill(path, rng) + "/" + fresh(rng)
        i = rng.randrange(1, len(segments))
        return fill("/".join(segments[:i] + [""] + segments[i:]), rng)

    def miss() -> str:
        return f"/{fresh(rng)}/{rng.randint(1, 3)}/{fresh(rng)}"

    sets = {
        "static hit": [(e.method, e.path) for e in static] * 20,
        "param hit": [(e.method, fill(e.path, rng)) for e in params * 100],
        "miss": [("GET", miss()) for _ in range(2000)],
        "not allowed": [(not_allowed(p), fill(p, rng)) for p in paths * 15],
        "near miss": [(rng.choice(METHODS), near(rng.choice(paths))) for _ in range(2000)],
    }
    mixed: list[Request] = []
    while len(mixed) < 10_000:
        roll = rng.random()
        if roll < 0.35:
            e = rng.choice(static)
            mixed.append((e.method, e.path))
        elif roll < 0.75:
            e = rng.choice(params)
            mixed.append((e.method, fill(e.path, rng)))
        elif roll < 0.85:
            mixed.append(("GET", miss()))
        elif roll < 0.95:
            mixed.append((rng.choice(METHODS), near(rng.choice(paths))))
        else:
            p = rng.choice(paths)
            mixed.append((not_allowed(p), fill(p, rng)))
    sets["mixed"] = mixed
    return sets


def edge_cases(endpoints: list[Endpoint]) -> list[Request]:
    """Inputs where routers are known to differ: each peer's disagreement classes are printed from these."""
    out: list[Request] = []
    for e in endpoints:
        p = e.path.replace("{", "").replace("}", "")
        out += [
            ("HEAD", p) if e.method == "GET" else (e.method, p),
            (e.method, "/" + p), (e.method, p + "/"), (e.method, p + "\n"), (e.method, p.upper()),
            (e.method, p.replace("/", "//", 2)), (e.method, p + "/."), (e.method, p.rsplit("/", 1)[0] + "/%2e%2e"),
        ]
        if "{" in e.path:
            for value in ("", ".", "..", "%2E%2e", "a%2Fb", "a%5Cb", "..;x", "a b", "%ff", "a\x00"):
                out.append((e.method, "/".join(value if s.startswith("{") else s for s in e.path.split("/"))))
    return out


def classify_keyscope(m: keyscope_matcher.Matcher) -> Callable[[str, str], Answer]:
    def classify(method: str, path: str) -> Answer:
        r = m.match(method, path.encode("latin-1"))
        if isinstance(r, keyscope_matcher.Match):
            return ("match", r.endpoint.path)
        return ("405", "") if isinstance(r, keyscope_matcher.MethodNotAllowed) else ("404", "")

    return classify


def build_peers(endpoints: list[Endpoint]) -> dict[str, tuple[Callable[[str, str], object], Callable[[str, str], Answer], float]]:
    """name -> (hot call, classifier, compile seconds). Each hot call is what that router's dispatcher runs."""
    methods: dict[str, list[str]] = defaultdict(list)
    for e in endpoints:
        methods[e.path].append(e.method)
    peers: dict[str, tuple[Callable[[str, str], object], Callable[[str, str], Answer], float]] = {}

    # Starlette: Router.app's loop over Route.matches, first FULL wins, first PARTIAL remembered.
    from starlette.routing import Match, Route

    def endpoint(request: object) -> None:
        return None

    t = time.perf_counter()
    routes = [Route(p, endpoint, methods=ms, name=p) for p, ms in methods.items()]
    starlette_compile = time.perf_counter() - t
    FULL, PARTIAL = Match.FULL, Match.PARTIAL

    def starlette(method: str, path: str) -> object:
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        partial = None
        for route in routes:
            match, child = route.matches(scope)
            if match is FULL:
                return route
            if match is PARTIAL and partial is None:
                partial = route
        return partial

    def starlette_classify(method: str, path: str) -> Answer:
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        for route in routes:
            if route.matches(scope)[0] is FULL:
                return ("match", route.path)
        return ("405", "") if starlette(method, path) is not None else ("404", "")

    peers["starlette"] = (starlette, starlette_classify, starlette_compile)

    # werkzeug: Map / MapAdapter.match (its state machine), errors are exceptions.
    from werkzeug.exceptions import MethodNotAllowed, NotFound
    from werkzeug.routing import Map, RequestRedirect, Rule

    def wz_path(p: str) -> str:
        return p.replace("{", "<").replace("}", ">")

    t = time.perf_counter()
    adapter = Map([Rule(wz_path(p), methods=ms, endpoint=p) for p, ms in methods.items()], merge_slashes=False).bind("x")
    wz_compile = time.perf_counter() - t
    wz_match = adapter.match

    def werkzeug(method: str, path: str) -> object:
        try:
            return wz_match(path, method)
        except (NotFound, MethodNotAllowed, RequestRedirect) as exc:
            return exc

    def werkzeug_classify(method: str, path: str) -> Answer:
        r = werkzeug(method, path)
        if isinstance(r, tuple):
            return ("match", r[0])
        return ("405", "") if isinstance(r, MethodNotAllowed) else ("404", "")

    peers["werkzeug"] = (werkzeug, werkzeug_classify, wz_compile)

    # falcon: CompiledRouter.find, then the resource's responders decide the method.
    from falcon.routing import CompiledRouter

    t = time.perf_counter()
    falcon_router = CompiledRouter()
    for p, ms in methods.items():
        resource = type("Resource", (), {f"on_{m.lower()}": lambda self, req, resp: None for m in ms})()
        resource.allowed = frozenset(ms)
        falcon_router.add_route(p, resource)
    falcon_router.find("/")  # falcon compiles lazily, on the first find
    falcon_compile = time.perf_counter() - t
    falcon_find = falcon_router.find

    def falcon(method: str, path: str) -> object:
        found = falcon_find(path)
        if found is None:
            return None
        return found if method in found[0].allowed else False

    def falcon_classify(method: str, path: str) -> Answer:
        r = falcon(method, path)
        return ("match", r[3]) if r else (("404", "") if r is None else ("405", ""))

    peers["falcon"] = (falcon, falcon_classify, falcon_compile)

    # sanic-routing: BaseRouter.resolve, NotFound / NoMethod exceptions.
    from sanic_routing import BaseRouter
    from sanic_routing.exceptions import NoMethod
    from sanic_routing.exceptions import NotFound as SanicNotFound

    class SanicRouter(BaseRouter):
        def get(self, path: str, method: str, extra: object = None) -> object:
            return self.resolve(path=path, method=method)

    t = time.perf_counter()
    sanic_router = SanicRouter()
    for p, ms in methods.items():
        sanic_router.add(wz_path(p), lambda: None, methods=ms, strict=True, name=p.replace("/", "_"))
    sanic_router.finalize()
    sanic_compile = time.perf_counter() - t
    sanic_resolve = sanic_router.resolve

    def sanic(method: str, path: str) -> object:
        try:
            return sanic_resolve(path, method=method)
        except (SanicNotFound, NoMethod) as exc:
            return exc

    def sanic_classify(method: str, path: str) -> Answer:
        r = sanic(method, path)
        if isinstance(r, tuple):
            return ("match", "/" + r[0].raw_path.replace("<", "{").replace(">", "}"))
        return ("405", "") if isinstance(r, NoMethod) else ("404", "")

    peers["sanic-routing"] = (sanic, sanic_classify, sanic_compile)

    # routrie: a Rust path tree; the value is our method table for the path.
    from routrie import Router as RoutrieRouter

    t = time.perf_counter()
    rt = RoutrieRouter({p.replace("{", ":").replace("}", ""): (p, frozenset(ms)) for p, ms in methods.items()})
    routrie_compile = time.perf_counter() - t
    rt_find = rt.find

    def routrie(method: str, path: str) -> object:
        found = rt_find(path)
        if found is None:
            return None
        return found if method in found[0][1] else False

    def routrie_classify(method: str, path: str) -> Answer:
        r = routrie(method, path)
        return ("match", r[0][0]) if r else (("404", "") if r is None else ("405", ""))

    peers["routrie"] = (routrie, routrie_classify, routrie_compile)

    # http-router: Router.match with its lru_cache bypassed (__wrapped__), so fresh values cost what they cost.
    from http_router import Router as HttpRouter

    t = time.perf_counter()
    hr = HttpRouter(trim_last_slash=False)
    for p, ms in methods.items():
        hr.route(p, methods=ms)(p)
    hr_compile = time.perf_counter() - t
    hr_match = HttpRouter.match.__wrapped__

    def http_router(method: str, path: str) -> object:
        return hr_match(hr, path, method)

    def http_router_classify(method: str, path: str) -> Answer:
        r = http_router(method, path)
        if r.path and r.method:
            return ("match", r.target)
        return ("405", "") if r.path else ("404", "")

    peers["http-router"] = (http_router, http_router_classify, hr_compile)
    return peers


def agreement(reference: Callable[[str, str], Answer], peers: dict, requests: list[Request]) -> None:
    print("Agreement with keyscope (disagreement classes: keyscope's answer -> peer's answer):")
    for name, (_, classify, _) in peers.items():
        classes: Counter[tuple[str, str]] = Counter()
        examples: dict[tuple[str, str], Request] = {}
        for method, path in requests:
            ours, theirs = reference(method, path), classify(method, path)
            if ours != theirs:
                key = (ours[0], theirs[0] if theirs[0] != ours[0] else "other template")
                classes[key] += 1
                examples.setdefault(key, (method, path))
        if not classes:
            print(f"  {name:14} agrees on all {len(requests)} inputs")
        for (ours_kind, theirs_kind), count in classes.most_common():
            method, path = examples[(ours_kind, theirs_kind)]
            print(f"  {name:14} {ours_kind:>5} -> {theirs_kind:14} x{count:<5} e.g. {method} {path!r}")


def measure(call: Callable[[str, object], object], requests: list[tuple[str, object]]) -> int:
    start = time.perf_counter_ns()
    for method, path in requests:
        call(method, path)
    return time.perf_counter_ns() - start


def bare_loop(requests: list[tuple[str, object]]) -> int:
    start = time.perf_counter_ns()
    for method, path in requests:
        pass
    return time.perf_counter_ns() - start


def timings(
    rows: dict[str, tuple[Callable[[str, object], object], bool]], requests: list[Request], rng: random.Random
) -> dict[str, float]:
    """ns per request for each row: the requests run in short chunks, every row on each chunk in a shuffled
    order, ROUNDS times; each chunk keeps its fastest time per row, so a burst of load on the shared machine
    spoils one chunk's round rather than a whole row."""
    chunks = [requests[i : i + CHUNK] for i in range(0, len(requests), CHUNK)]
    names = list(rows)
    best: dict[str, list[float]] = {name: [float("inf")] * len(chunks) for name in names + ["loop"]}
    for _ in range(ROUNDS):
        for c, chunk in enumerate(chunks):
            as_bytes = [(m, p.encode("latin-1")) for m, p in chunk]
            rng.shuffle(names)
            for name in names:
                call, wants_bytes = rows[name]
                best[name][c] = min(best[name][c], measure(call, as_bytes if wants_bytes else chunk))
            best["loop"][c] = min(best["loop"][c], bare_loop(chunk))
    loop = sum(best["loop"])
    return {name: (sum(best[name]) - loop) / len(requests) for name in rows}


def main() -> None:
    rng = random.Random(20261127)
    endpoints = load()
    t = time.perf_counter()
    compiled = keyscope_matcher.compile(endpoints)
    keyscope_compile = time.perf_counter() - t
    peers = build_peers(endpoints)
    sets = workloads(endpoints, rng)

    inputs = [r for requests in sets.values() for r in requests] + edge_cases(endpoints)
    agreement(classify_keyscope(compiled), peers, inputs)

    whole = {e.path: e for e in endpoints}
    rows: dict[str, tuple[Callable[[str, object], object], bool]] = {
        "keyscope": (compiled.match, True),
        "keyscope (str)": (compiled.match, False),
    }
    rows.update({name: (hot, False) for name, (hot, _, _) in peers.items()})

    def dict_floor(method: str, path: object) -> object:
        return whole.get(path)  # type: ignore[call-overload]

    def split_floor(method: str, path: str) -> object:
        return path.split("/")

    rows["floor: dict[path]"] = (dict_floor, False)
    rows["floor: split('/')"] = (split_floor, False)

    def keyscope_params(method: str, path: object) -> object:
        result = compiled.match(method, path)  # type: ignore[arg-type]
        return result.params if result else result

    rows["keyscope + .params"] = (keyscope_params, True)

    results: dict[str, dict[str, float]] = defaultdict(dict)
    gc.disable()
    try:
        for workload, requests in sets.items():
            results_for = timings(rows, requests, rng)
            for name, ns in results_for.items():
                results[name][workload] = ns
    finally:
        gc.enable()

    compile_ms = {"keyscope": keyscope_compile}
    compile_ms.update({name: seconds for name, (_, _, seconds) in peers.items()})
    workload_names = list(sets)
    print()
    print(f"ns per match, fastest of {ROUNDS} interleaved rounds per chunk of {CHUNK}, minus the bare loop; (x) = router / keyscope")
    header = f"{'router':18}" + "".join(f"{w:>20}" for w in workload_names) + f"{'compile ms':>12}"
    print(header)
    print("-" * len(header))
    for name in rows:
        cells = ""
        for w in workload_names:
            ns, ours = results[name][w], results["keyscope"][w]
            cells += f"{ns:>11.0f} ({ns / ours:5.1f}x)" if name != "keyscope" else f"{ns:>11.0f}         "
        ms = f"{compile_ms[name] * 1e3:>12.2f}" if name in compile_ms else f"{'':>12}"
        print(f"{name:18}{cells}{ms}")
    print()
    fastest = {w: min((results[n][w], n) for n in peers) for w in workload_names}
    for w, (ns, name) in fastest.items():
        print(f"{w:12}: fastest peer {name} {ns:.0f} ns = {ns / results['keyscope'][w]:.1f}x keyscope")
    print(f"static hit vs dict floor: {results['keyscope']['static hit'] / results['floor: dict[path]']['static hit']:.1f}x")


if __name__ == "__main__":
    main()
