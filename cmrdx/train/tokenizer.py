"""A BERT WordPiece vocabulary trained on the training reports (``tokenizers``), written as ``vocab.txt``.

The vocabulary file is what ``cmrdx.train.export.build_tokenizer`` turns into the shipped ``tokenizer.json``;
training tokenises through that same function, so the text a model saw in training and the text it gets at
run time are split identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cmrdx.fileio import atomic_write

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_vocab(texts: Iterable[str], out: str | Path, *, vocab_size: int = 2000, lowercase: bool = True,
                min_frequency: int = 2) -> Path:
    """Train WordPiece on ``texts`` and write ``out`` (one token per line, ids = line numbers, specials first).

    Args:
        texts: training report texts (the held-out phrasing style must not be among them).
        vocab_size: upper bound on the vocabulary (a small corpus may give fewer tokens).
        lowercase: lower-case and strip accents before splitting (BERT uncased normaliser).
        min_frequency: pieces seen fewer times are not merged into the vocabulary.
    Returns:
        The path written. Not bit-reproducible across processes: the library breaks merge-count ties in hash
        order, so a run writes its vocabulary once (trainer work folder) and the export records its sha256.
        Every single character of the corpus is in the vocabulary, so an unseen word is spelled out in pieces
        rather than mapped to [UNK].
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                               lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # A printable-ASCII alphabet beyond the corpus's: prompts written later (bank authors, users) may use
    # characters no training report had; they become single-character pieces, not [UNK].
    alphabet = [chr(c) for c in range(33, 127)]
    if lowercase:
        alphabet = sorted({a.lower() for a in alphabet})
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIALS), initial_alphabet=alphabet,
                                        continuing_subword_prefix="##")
    tk.train_from_iterator(list(texts), trainer=trainer)
    vocab = tk.get_vocab()
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "".join(f"{tok}\n" for tok, _ in ordered))
    return out


def load_tokenizer(vocab_path: str | Path, *, lowercase: bool = True, max_length: int = 256):
    """The run-time tokenizer (``tokenizers.Tokenizer``) and its pad id, built as the export builds it."""
    from cmrdx.train.export import build_tokenizer

    return build_tokenizer(Path(vocab_path), lowercase=lowercase, max_length=max_length)
