"""The queue: its unit of work (``Work``), batch forming and priorities, admission, splitting on
out-of-memory, outcomes.

One ``Batcher`` per engine forms batches from every request and hands them to the
engine's thread; ``interface.WorkQueue`` is the one interface every caller holds.
It knows nothing of HTTP: outcomes are exceptions (``outcomes``) that the HTTP
edge maps to statuses once.

May import: ``model``, and ``service.settings`` / ``service.metrics``; never
``service.api`` or ``service.processes``.
"""
