"""``poise serve``: an OpenAI-compatible server over any ``LanguageModel``.

- :mod:`poise.serve.schema`: ``ServeConfig`` (one field per CLI flag), request parsing and
  OpenAI-style errors;
- :mod:`poise.serve.continuous`: continuous batching over a model's engine (requests join the
  running batch at step boundaries; streams get each token's text as decoded);
- :mod:`poise.serve.batcher`: batches concurrent requests into ``generate`` calls, for models
  without an engine;
- :mod:`poise.serve.ticket`: a request's way back to its handler, common to both;
- :mod:`poise.serve.app`: the FastAPI app (``create_app``) and ``serve`` (uvicorn).

FastAPI and uvicorn load only when ``poise.serve.app`` is imported (the ``serve`` extra).
"""
