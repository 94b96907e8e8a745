"""State as code: the store's applications, entities, associations and keys as one document (never a secret),
what it would take to make a store match one, and doing it in one transaction (`keyscope export`, `diff`,
`apply`, served at `/keyscope/1/state` by `keyscope.control.state`).

`document` reads (every problem at once) and writes the document, `export` reads a store into the same model,
`plan` compares the two (references checked, cascades previewed), `apply` runs a plan through the store's own
methods, `sync` puts them together in one transaction, and `yamlfile` is the file's YAML form for the CLI.
Below `control`: it needs only the store and the management documents' rules (`keyscope.documents`).
"""
