"""The try-on HTTP service: FastAPI in front of model.engine (no layer names here).

Data flows one way: request -> inputs -> queue -> engine -> encoder -> response.
The service is five rooms, each importing only the ones below it
(docs/architecture.md draws them):

- ``api/``: the HTTP edge: the app, middleware, errors, OpenAPI, dependencies, one
  module per router (/v1, and /v2: the Open Inference Protocol), parsing of requests,
  the response cache.
- ``jobs/``: catalog jobs (POST /v1/jobs): the job store, the runner, webhooks.
- ``processes/``: TRYON_WORKERS > 1: the supervisor that starts front ends, the
  engine server, the remote batcher, the wire format, the shared-memory arena.
- ``codec/``: below both entry points (api/ and jobs/): fetching URLs, decoding and
  framing the inputs, compositing and encoding the result, the one error shape.
- ``queue/``: its unit of work (``Work``), batch forming and priorities, admission, splitting on
  out-of-memory, outcomes; the engine host that loads and warms the model.

Beside them, the foundation every room may import: ``settings``, ``limits``,
``metrics``, ``logs``, ``examples/`` (the example images), ``tracing/`` (OpenTelemetry
traces, off unless the ``OTEL_*`` variables turn them on). ``__main__`` (tryon-serve) is the one module that
imports ``api`` and ``processes`` both.
"""
