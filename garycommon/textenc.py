"""T5 text encoders for all three engines, loaded from a local folder or the hub through one code path.

The published checkpoints name their text encoder (`t5-base` for MusicGen, SAO-small and MelodyFlow). Demo mode and
tests put a tiny random T5 in the same folder layout at `LOCAL_MODELS_DIR/<name>`, so they exercise this loader.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch

from .errors import ErrorCode, ModelLoadError
from .hub import resolve_model_dir
from .settings import Settings

# Short names used in checkpoints -> their hub repos.
HUB_ALIASES: dict[str, str] = {
    "t5-small": "google-t5/t5-small",
    "t5-base": "google-t5/t5-base",
    "t5-large": "google-t5/t5-large",
    "t5-3b": "google-t5/t5-3b",
    "t5-11b": "google-t5/t5-11b",
}
# Encoder width of each T5 the published checkpoints may name: their conditioners' projections are sized from it.
T5_DIMS: dict[str, int] = {
    "t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
    "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
    "google/flan-t5-xl": 2048, "google/flan-t5-xxl": 4096,
}
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER = ("tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json")


def t5_dir(name: str, settings: Settings) -> Path:
    """Folder holding the T5 `name`: an existing path, LOCAL_MODELS_DIR/<name>, or a hub download."""
    if Path(name).is_dir():
        return Path(name)
    if settings.local_models_dir is not None and (settings.local_models_dir / name).is_dir():
        return settings.local_models_dir / name
    repo = HUB_ALIASES.get(name, name)
    return resolve_model_dir(repo, ["config.json"], settings, optional_files=[*_WEIGHTS, *_TOKENIZER])


def load_t5(
    name: str, settings: Settings, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
):  # -> tuple[PreTrainedTokenizerBase, T5EncoderModel]
    """Tokenizer and encoder (eval mode, no grad) for `name`."""
    from transformers import AutoTokenizer, T5EncoderModel

    folder = t5_dir(name, settings)
    if not any((folder / w).exists() for w in _WEIGHTS):
        raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"T5 {name!r}: no weights in {folder}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        encoder = T5EncoderModel.from_pretrained(str(folder), torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"could not load T5 {name!r} from {folder}: {exc}") from exc
    encoder.eval().requires_grad_(False).to(device)
    return tokenizer, encoder


_WORDS = (
    "drums bass guitar piano synth strings violin orchestra epic film lofi chill jungle breaks techno house ambient "
    "dark bright warm vintage retro folk accordion trap hip hop jazz funk soul rock metal punk pop dance electronic "
    "acoustic electric percussion kick snare hat cymbal pad lead arp pluck vocal choir brass flute sax trumpet "
    "bpm fast slow groove swing loop melody chords rhythm minor major reverb delay distortion clean soft loud "
    "the a of with and in for to by on at from 120 90 140 174 tempo beat song track mix master"
).split()


def _train_spiece(vocab_size: int, seed: int) -> bytes:
    import sentencepiece as spm

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    return model.getvalue()


def _tokenizer_from_spiece(cls, proto: bytes, path: Path):  # noqa: ANN001 - transformers class
    """transformers 5 builds T5's tokenizer from (piece, score) pairs; 4.x converts the sentencepiece file."""
    import inspect

    import sentencepiece as spm

    if "vocab" in inspect.signature(cls.__init__).parameters:
        sp = spm.SentencePieceProcessor(model_proto=proto)
        vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
        return cls(vocab=vocab, extra_ids=100)
    return cls(vocab_file=str(path), extra_ids=100)


def write_tiny_t5(
    folder: Path, *, d_model: int = 768, d_kv: int = 16, num_heads: int = 4, d_ff: int = 64, num_layers: int = 2,
    vocab_size: int = 200, seed: int = 0,
) -> Path:
    """Write a tiny random T5 (config, safetensors, sentencepiece tokenizer) in the hub layout; idempotent."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    folder = Path(folder)
    marker = folder / "tiny_t5.json"
    spec = {"d_model": d_model, "d_kv": d_kv, "num_heads": num_heads, "d_ff": d_ff, "num_layers": num_layers,
            "vocab_size": vocab_size, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    proto = _train_spiece(vocab_size, seed)
    (folder / "spiece.model").write_bytes(proto)
    tokenizer = _tokenizer_from_spiece(T5TokenizerFast, proto, folder / "spiece.model")
    tokenizer.save_pretrained(str(folder))
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_kv, num_heads=num_heads, d_ff=d_ff, num_layers=num_layers,
        num_decoder_layers=num_layers, feed_forward_proj="relu", is_encoder_decoder=True,
    )
    gen = torch.Generator().manual_seed(seed)
    model = T5EncoderModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(str(folder), safe_serialization=True)
    marker.write_text(json.dumps(spec))
    return folder
