"""Catalog jobs: try-ons that outlive the connection (POST /v1/jobs).

- ``records``: what a job is (its status, its garments' states, its status document).
- ``store``: the ``JobStore`` interface and the embedded store (this process only).
- ``redis_store``: the store shared by every replica (TRYON_JOBS_URL): a stream of tasks
  with a consumer group, a stream of webhook deliveries, claimed over when a replica dies.
- ``runner``: takes tasks from the store, decodes and encodes them through the codec and runs
  their garments through the queue's one interface (``WorkQueue.submit`` with ``Priority.BULK``),
  as /v1/tryon/batch does.
- ``webhooks``: Standard Webhooks signing and delivery with retries; ``targets``: webhook URLs
  checked by the codec's URL rules.
- ``wiring``: ``Jobs``, the store, runner and sender built from the settings, which the edge
  (service/api/state.py) starts and stops.

May import: ``service.codec`` (decoding, encoding, the URL rules, the errors' codes: called
here as the routes call them), ``service.queue``, ``model`` and the foundation; never
``service.api``, which builds this room and starts it.
"""
