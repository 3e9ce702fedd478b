"""Model families: what the engine knows about an audio LLM, behind one interface.

`family_for(model)` answers which family a model name, hub id or model folder belongs to; the
family describes the model without torch (`engine.models.family.ModelFamily`) and hands out its
torch runtime on demand. Adding a family: one package beside `qwen2_audio/` and one entry in
FAMILIES.
"""

from __future__ import annotations

from engine.models.family import ModelError, ModelFamily, folder_model_type
from engine.models.qwen2_audio import QWEN2_AUDIO

FAMILIES: tuple[ModelFamily, ...] = (QWEN2_AUDIO,)
DEFAULT_FAMILY: ModelFamily = QWEN2_AUDIO


def family_for(model: str | None) -> ModelFamily:
    """The family of a model name, hub id or model folder.

    A folder whose config.json names a model_type no family knows is refused with ModelError.
    A name nothing recognises (a hub id of another spelling, a path that does not exist yet)
    gets the default family; loading it then reports what is missing.
    """
    if model is None or not str(model).strip():
        return DEFAULT_FAMILY
    for family in FAMILIES:
        if family.recognises(str(model)):
            return family
    model_type = folder_model_type(str(model))
    if model_type is not None:
        known = ", ".join(f"{t} ({f.display_name})" for f in FAMILIES for t in f.model_types)
        raise ModelError(f"{model}: config.json names model_type {model_type!r}, which no model family "
                         f"here supports (supported: {known})")
    return DEFAULT_FAMILY


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "ModelError", "ModelFamily", "family_for"]
