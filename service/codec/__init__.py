"""Bytes in, bytes out: what both entry points (the HTTP edge, api/, and the catalog jobs, jobs/)
share to turn what a caller sent into the model's inputs and the model's output into an image.

- ``sources``: a request's or a job's inputs as they came (``RequestParts``).
- ``fetch``: fetching image URLs, and the rules every URL the service reaches follows (SSRF).
- ``person``: decoding the person side (a photo framed as VITON frames people, kept for a
  composite) and the garments (placed as VITON's are), drawing what is not given; the
  model's input errors as the service's.
- ``output``: the output options and a result encoded in them (for a photo and
  ``size=original``, composited into it first).
- ``errors``: ``ApiError``, the one error shape both entry points give, and the queue's outcomes as it.

May import: ``service.queue``, ``model`` and the foundation; never ``service.api``,
``service.jobs`` or ``service.processes``: they import it, and build and call it the same way.
"""
