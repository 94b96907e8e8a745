"""Flask reader: echoes what a Flask app on werkzeug reads from a request (the differential suite's contract).

Everything is answered from a `before_request` hook, so no route, redirect or method check of werkzeug's
router stands between the request and the echo: what is reported is what a view would read.
"""

from __future__ import annotations

import json
import logging
import sys

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import run_simple

NAME = "flask"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

app = Flask(__name__)


def single(values) -> dict:
    """`MultiDict.get`: the first value of each name, as `request.args.get(name)` returns it."""
    return {name: values.get(name) for name in values}


def every(values) -> dict:
    return values.to_dict(flat=False)


@app.before_request
def echo() -> Response:
    out = {"reader": NAME, "method": request.method, "path": request.path, "query": single(request.args),
           "query_all": every(request.args), "form": None, "files": [], "json": None}
    status = 200
    try:
        if request.mimetype in FORM_TYPES:
            out["form"] = single(request.form)
            out["form_all"] = every(request.form)
            out["files"] = list(request.files)
        if request.is_json:
            out["json"] = request.get_json()
    except HTTPException as exc:  # what Flask would answer instead of running the view
        out["error"] = f"{exc.code} {exc.name}: {exc.description}"
        status = 400
    return Response(json.dumps(out), status, mimetype="application/json")


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
