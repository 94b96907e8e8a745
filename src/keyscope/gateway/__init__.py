"""Where requests meet the decision: the ASGI gateway (reverse proxy) and the ASGI middleware, the early-answer
protocol under uvicorn, the upstream client, and `explain`, which runs the same checks without forwarding."""
