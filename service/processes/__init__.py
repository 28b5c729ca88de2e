"""The processes of TRYON_WORKERS > 1: one engine process, N front-end processes.

``supervisor`` runs the engine process (the engine host and its one batcher, served
by ``engine_server`` on a Unix socket) and starts the front ends; a front end
queues through ``remote.RemoteBatcher``, which implements the queue's interface
over ``wire`` messages, with a try-on's images in an ``arena`` of shared memory.

May import: ``service.queue``, ``model`` and the foundation (``service.settings``,
``metrics``, ``logs``); never ``service.api`` (the supervisor starts a front end by
its module's name).
"""
