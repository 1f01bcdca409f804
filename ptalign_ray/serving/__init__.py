"""Serving: the aligned model over OpenAI-compatible HTTP on Ray Serve, next to the safety judge.

- ``plan.py``: which engines and model names a run directory + config give (merged or LoRA mode);
- ``protection.py``: bearer-token auth, body / prompt / max_tokens / n limits, stream deadlines;
- ``app.py``: the Serve application (ray.serve.llm engines behind one protected ingress) and
  ``ptalign serve``.
"""
