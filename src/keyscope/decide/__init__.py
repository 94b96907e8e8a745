"""Steps 2-5 of every request: who is calling, whether the endpoint is allowed, which ids it names, whether
they exist. Driven by the gateway, the middleware and `explain` alike."""
