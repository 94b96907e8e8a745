"""The management API: the platform's application, entity, association and key endpoints.

`admin` is the app (who may call, routing, error bodies) and `call()` to run it in-process; `applications`,
`entities`, `associations` and `keys` hold the handlers, on what `handling` gives them; `bodies` reads a
request (size-limited body, strict JSON, query); `fields`, `schema` and `keyschema` validate documents and
`render` writes records back as the platform's JSON.
"""
