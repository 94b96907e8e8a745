"""Running keyscope as processes: the gateway under uvicorn, its workers, the status listener and the web UI."""
