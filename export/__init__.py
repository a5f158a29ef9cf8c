"""Export stage: sentence-transformers model → ONNX variants → gates → versioned bundle in a registry.

``export.bundle`` (the bundle format and its read API), ``export.registry`` (publish, promote, rollback),
``export.fsutil`` (durable writes) and ``export.runtime`` import without torch: the serving image uses them. The
modules that build bundles (``onnx_export``, ``quantize``, ``pipeline``) need the training extras.
Run ``python -m export --help``.
"""
