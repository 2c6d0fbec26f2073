"""``poise serve``: an OpenAI-compatible server over any ``LanguageModel``.

- :mod:`poise.serve.schema`: ``ServeConfig`` (one field per CLI flag), request parsing and
  OpenAI-style errors;
- :mod:`poise.serve.batcher`: batches concurrent requests into ``generate`` calls;
- :mod:`poise.serve.app`: the FastAPI app (``create_app``) and ``serve`` (uvicorn).

FastAPI and uvicorn load only when ``poise.serve.app`` is imported (the ``serve`` extra).
"""
