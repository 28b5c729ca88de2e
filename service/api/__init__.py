"""The HTTP edge: the app, middleware, errors, OpenAPI, dependencies, one module per router,
parsing of requests, the response cache, and uvicorn around it all.

A request's way: ``middleware`` (request id, metrics, the access log line) -> a router
in ``routes/`` -> ``deps`` (API key, readiness, options) -> ``steps`` (``body`` reads,
``inputs`` parses, ``options`` types the options, the codec fetches URLs and decodes, the
cache is asked, the queue runs the work, the codec encodes) -> the response. ``errors`` maps
every failure, the queue's outcomes included, to the one JSON error shape.

May import: ``service.jobs`` (started here), ``service.processes`` (a front end's
remote batcher), ``service.codec`` (decoding, encoding, fetching), ``service.queue``, ``model``
and the foundation (``service.settings``, ``metrics``, ``logs``, ``limits``, ``examples``).
"""
