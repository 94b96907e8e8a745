"""What every layer shares and nothing imports back from: the data model, secrets, error bodies, the bounds on
input, the settings and the ASGI types."""
