"""The linked keys' allowlist: the declarative table (`endpoints.yaml`) and the matcher compiled from it."""
