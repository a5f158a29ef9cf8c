"""Export stage: sentence-transformers model → ONNX variants → gates → versioned bundle in a registry.

``export.bundle`` (the bundle format and loader) and ``export.runtime`` import without torch; the
modules that build bundles (``onnx_export``, ``quantize``, ``pipeline``) need the training extras.
Run ``python -m export --help``.
"""
