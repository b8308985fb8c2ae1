"""Captions to token ids, for image-text methods: byte-level tokens (no training, nothing to store)
or byte-level BPE trained on the training captions (the `tokenizers` package), stored with the
run as JSON so that evaluation encodes text exactly as training did.

Ids: 0 pads, 1 starts and 2 ends every caption; a caption longer than the context is cut and
still ends with 2. `encode` gives every image's captions as one tensor.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor

from .imageset import DataError

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


class Tokenizer:
    """Bytes when `bpe` is None, else the BPE model (a `tokenizers.Tokenizer`)."""

    def __init__(self, context_length: int, bpe=None):
        self.context_length, self.bpe = context_length, bpe

    @property
    def vocab_size(self) -> int:
        return self.bpe.get_vocab_size() if self.bpe is not None else 256 + len(SPECIALS)

    @classmethod
    def fit(cls, kind: str, texts: list[list[str]], context_length: int, vocab_size: int) -> Tokenizer:
        """kind: bytes | bpe (trained on `texts`, the training captions; deterministic)."""
        if kind == "bytes":
            return cls(context_length)
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        bpe = HFTokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator((c.lower() for caps in texts for c in caps), trainer)
        return cls(context_length, bpe)

    def to_json(self) -> str:
        return json.dumps({"context_length": self.context_length,
                           "bpe": self.bpe.to_str() if self.bpe is not None else None})

    @classmethod
    def from_json(cls, text: str, where: str = "tokenizer") -> Tokenizer:
        try:
            d = json.loads(text)
            bpe = None
            if d["bpe"] is not None:
                from tokenizers import Tokenizer as HFTokenizer

                bpe = HFTokenizer.from_str(d["bpe"])
            return cls(int(d["context_length"]), bpe)
        except Exception as e:  # json, key, or the tokenizers library's own parse error
            raise DataError(f"{where} is not a selfsup tokenizer ({type(e).__name__}: {e})") from None

    def ids(self, caption: str) -> list[int]:
        caption = caption.strip().lower()
        body = (self.bpe.encode(caption).ids if self.bpe is not None
                else [b + len(SPECIALS) for b in caption.encode("utf-8")])
        return [BOS, *body[: self.context_length - 2], EOS]

    def encode(self, texts: list[list[str]]) -> tuple[Tensor, Tensor]:
        """[N] lists of captions -> (tokens int64 [N, K, T], valid bool [N, K]); K is the most
        captions an image has, T the context length."""
        k = max(len(caps) for caps in texts)
        tokens = torch.full((len(texts), k, self.context_length), PAD, dtype=torch.int64)
        valid = torch.zeros(len(texts), k, dtype=torch.bool)
        for i, caps in enumerate(texts):
            for j, c in enumerate(caps):
                ids = self.ids(c)
                tokens[i, j, : len(ids)] = torch.tensor(ids)
                valid[i, j] = True
        return tokens, valid
