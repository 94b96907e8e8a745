"""Django reader: a one-file Django app (settings.configure) on wsgiref, echoing what its views would read.

`request.GET` and `request.POST`/`request.FILES` are Django's own QueryDict and MultiPartParser with the default
limits (1,000 fields, 100 files). Django parses a form body only for POST; for other methods the form is read
the way Django REST framework's FormParser/MultiPartParser do, with the same classes. A JSON body is
`json.loads(request.body)` when the Content-Type is `application/json`, as DRF's JSONParser decides.
"""

from __future__ import annotations

import json
import logging
import sys
from io import BytesIO
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="differential-reader", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
    MIDDLEWARE=[], INSTALLED_APPS=[], USE_TZ=True, LOGGING_CONFIG=None,
)
django.setup()

from django.core.exceptions import BadRequest, SuspiciousOperation  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, QueryDict  # noqa: E402
from django.http.multipartparser import MultiPartParser, MultiPartParserError  # noqa: E402
from django.urls import re_path  # noqa: E402

NAME = "django"


def single(values: QueryDict) -> dict:
    """`QueryDict.get`: the last value of each name."""
    return {name: values.get(name) for name in values}


def every(values: QueryDict) -> dict:
    return {name: values.getlist(name) for name in values}


def form_of(request) -> tuple[QueryDict, list[str]]:
    if request.method == "POST":
        return request.POST, list(request.FILES)
    if request.content_type == "multipart/form-data":
        parser = MultiPartParser(request.META, BytesIO(request.body), request.upload_handlers, request.encoding)
        fields, files = parser.parse()
        return fields, list(files)
    return QueryDict(request.body, encoding=request.encoding), []


def read(request) -> dict:
    body = request.body  # read first: Django cannot give the raw body after parsing a multipart one
    out = {"reader": NAME, "method": request.method, "path": request.path_info, "query": single(request.GET),
           "query_all": every(request.GET), "form": None, "files": [], "json": None}
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        fields, out["files"] = form_of(request)
        out["form"], out["form_all"] = single(fields), every(fields)
    elif request.content_type == "application/json" and body:
        out["json"] = json.loads(body)
    return out


def echo(request) -> HttpResponse:
    try:
        out, status = read(request), 200
    except (SuspiciousOperation, BadRequest, MultiPartParserError, ValueError) as exc:  # Django answers 400
        out, status = {"reader": NAME, "error": f"{type(exc).__name__}: {exc}"}, 400
    return HttpResponse(json.dumps(out), status=status, content_type="application/json")


urlpatterns = [re_path(r"", echo)]


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    logging.getLogger("django").setLevel(logging.CRITICAL)  # a 400 is an answer here, not news
    make_server("127.0.0.1", int(sys.argv[1]), get_wsgi_application(), Server, Quiet).serve_forever()
