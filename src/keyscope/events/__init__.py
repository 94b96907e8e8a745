"""Deletion events delivered to receivers (`--events-url`): the sending side of the store's outbox.

The store writes the events (`keyscope.store.outbox`) in the transactions that delete; this package POSTs them,
signed, to each configured receiver, in order, until each answers 2xx. Modules, one concept each: `backoff`
(how long to wait after a failure), `signing` (the headers and their HMAC), `sender` (one HTTP POST on the
gateway's own client), `target` (one receiver's delivery loop and its lease), `deliverer` (the loops of one
process, started and stopped with the gateway: `attach()`).
"""
