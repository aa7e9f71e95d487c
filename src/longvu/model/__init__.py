"""The paper, top to bottom (LongVU, Shen et al., ICML 2025).

``intake`` and ``video`` (frames sampled at 1 fps), ``preprocess``, ``towers`` (the DINOv2 and SigLIP
forward), ``connector`` (the SVA connector), ``compress`` (temporal reduction, text-guided selection,
spatial token compression), ``encode`` (the question-independent half, streamed), ``compose`` (the
question-dependent half), ``prompt``, ``context``, ``generation``; ``devices`` and ``observe`` serve them.
This layer imports nothing of the package but ``config``, ``errors`` and ``files``.
"""
