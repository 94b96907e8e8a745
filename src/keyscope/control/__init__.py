"""The management API: the platform's application, entity, association and key endpoints.

`admin` is the app (who may call, routing, error bodies) and `call()` to run it in-process; `applications`,
`entities`, `associations`, `keys`, `audit` and `state` hold the handlers, on what `handling` gives them;
`bodies` reads a request (size-limited body, strict JSON, query); `keyscope.documents` validates documents
(shared with `keyscope.state`) and `render` writes records back as the platform's JSON.
"""
