"""HTTP/1.1 and URI rules with no I/O: step 1, the canonical request target and head."""
