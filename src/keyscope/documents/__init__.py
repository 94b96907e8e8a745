"""The management documents' rules: what an application, entity, association or key document may say, field by
field, and the management queries. Below `control` (the API that answers with them) and `state` (the state file
that holds them), so that both accept and refuse a document the same way."""
