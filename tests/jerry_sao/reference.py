"""Build stable-audio-tools 0.0.19 models from a config with our weights and the tiny local T5 (test helper).

stable-audio-tools loads its T5 by hub name (`t5-base`); no weights can be downloaded here, so `from_pretrained`
is pointed at the tiny T5 folder while the reference model is built, and the encoder is reloaded in fp32 (the library
casts it to fp16, rounding its weights) so both sides see the same text embeddings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def t5_redirect(folder: Path) -> Iterator[None]:
    import transformers

    originals = {name: getattr(transformers, name) for name in ("AutoTokenizer", "T5EncoderModel")}

    def redirect(cls: Any) -> type:
        class Redirected(cls):  # type: ignore[misc, valid-type]
            @classmethod
            def from_pretrained(cls_, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N804
                with torch.device("cpu"):  # real weights even while the caller builds on the meta device
                    return cls.from_pretrained(str(folder), *args, **kwargs)

        return Redirected

    for name, cls in originals.items():
        setattr(transformers, name, redirect(cls))
    try:
        yield
    finally:
        for name, cls in originals.items():
            setattr(transformers, name, cls)


def build_reference(config: dict[str, Any], state: dict[str, torch.Tensor], t5_folder: Path) -> Any:
    from stable_audio_tools.models.factory import create_model_from_config

    with t5_redirect(t5_folder):
        model = create_model_from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    from transformers import T5EncoderModel

    for cond in model.conditioner.conditioners.values():
        if "model" in cond.__dict__:  # the library rounded it to fp16: reload the same weights in fp32
            cond.__dict__["model"] = T5EncoderModel.from_pretrained(str(t5_folder)).eval()
    return model.eval()
