"""The server: an OpenAI-compatible HTTP API and a web page around one :class:`~longvu.pipeline.api.LongVU`.

``app`` builds the FastAPI application; ``settings``, ``errors``, ``openai`` (request and response
shapes), ``jobs`` (queue and worker), ``media`` (where a request's video comes from), ``parts``,
``store``, ``guard``, ``remote``, ``thumbnails`` and ``replicas`` (Ray Serve) are its parts.
"""
