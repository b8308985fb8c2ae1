"""Evaluations of an image-text method (CLIP): cross-modal retrieval on held-out pairs, and
zero-shot classification of a labelled dataset by prompts made from its class names (CLIP §3.1).
Both embed with the method's own projections and the run's tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup.data import ImageSet
from selfsup.data.text import Tokenizer
from selfsup.device import autocast
from selfsup.eval.features import extract_features, frozen_eval


class _ImageSide(nn.Module):
    """An image-text method's image side (backbone and projection, normalised) under the backbone
    contract, so that extract_features batches, resizes and normalises its inputs."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method, self.dim = method, method.cfg.embed_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.method.embed_images(x)


def embed_images(method: nn.Module, images: Tensor, mean, std, size: int, device, precision: str = "fp32",
                 batch_size: int = 256) -> Tensor:
    """uint8 [N, C, H, W] -> [N, E] normalised image embeddings."""
    return extract_features(_ImageSide(method), images, mean, std, batch_size=batch_size, device=device,
                            precision=precision, size=size)


@torch.no_grad()
def embed_texts(method: nn.Module, tokenizer: Tokenizer, captions: Sequence[str], device,
                precision: str = "fp32", batch_size: int = 512) -> Tensor:
    """[M] captions -> [M, E] normalised text embeddings."""
    out = []
    with frozen_eval(method):
        for s in range(0, len(captions), batch_size):
            tokens, _ = tokenizer.encode([[c] for c in captions[s:s + batch_size]])
            with autocast(device, precision):
                out.append(method.embed_texts(tokens[:, 0].to(device)).float())
    return torch.cat(out)


def recall_at_k(sim: Tensor, owner: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[int, float]]:
    """Recall@k both ways from similarities `sim` [N images, M captions], where caption m
    belongs to image owner[m]. Image->text: an image is found if any of its captions is among
    its k most similar; text->image: a caption is found if its image is among its k most similar.
    Percentages."""
    n = sim.shape[0]
    i2t, t2i = {}, {}
    order_t = sim.argsort(dim=1, descending=True)  # [N, M] captions by similarity, per image
    hits_t = owner[order_t] == torch.arange(n, device=sim.device)[:, None]  # [N, M]
    first_t = hits_t.float().argmax(dim=1)  # rank of the first own caption
    order_i = sim.T.argsort(dim=1, descending=True)  # [M, N] images by similarity, per caption
    rank_i = (order_i == owner[:, None]).float().argmax(dim=1)
    for k in ks:
        i2t[k] = (first_t < k).float().mean().item() * 100
        t2i[k] = (rank_i < k).float().mean().item() * 100
    return {"image_to_text": i2t, "text_to_image": t2i}


def retrieval(method: nn.Module, tokenizer: Tokenizer, test: ImageSet, mean, std, size: int, device,
              precision: str = "fp32", ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Image<->text recall@k over every held-out image and every one of its captions."""
    if test.texts is None:
        raise ValueError(f"{test.name} has no captions to retrieve")
    captions = [c for caps in test.texts for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(test.texts) for _ in caps], device=device)
    img = embed_images(method, test.images, mean, std, size, device, precision)
    txt = embed_texts(method, tokenizer, captions, device, precision)
    res = recall_at_k(img @ txt.T, owner, ks)
    chance = {k: min(100.0, 100 * k / len(test)) for k in ks}
    return {**res, "top1": res["image_to_text"][ks[0]], "chance_text_to_image": chance,
            "protocol": f"retrieval: {len(test)} held-out images and their {len(captions)} captions, "
                        f"cosine similarity of the method's projected embeddings; recall@k in %"}


def zero_shot(method: nn.Module, tokenizer: Tokenizer, test: ImageSet, templates: Sequence[str], mean, std,
              size: int, device, precision: str = "fp32") -> dict:
    """Top-1 of classifying `test` by its class names: each class's embedding is the normalised
    mean of its prompts' embeddings (CLIP's prompt ensembling, §3.1.4)."""
    if test.labels is None or not test.classes:
        raise ValueError(f"{test.name} has no class names for zero-shot classification")
    names = [c.replace("_", " ") for c in test.classes]
    prompts = [t.format(c) for c in names for t in templates]
    txt = embed_texts(method, tokenizer, prompts, device, precision).view(len(names), len(templates), -1)
    classes = torch.nn.functional.normalize(txt.mean(dim=1), dim=-1)  # [K, E]
    img = embed_images(method, test.images, mean, std, size, device, precision)
    pred = (img @ classes.T).argmax(dim=1).cpu()
    top1 = (pred == test.labels).float().mean().item() * 100
    return {"top1": top1, "chance": 100 / len(names),
            "protocol": f"zero-shot: {len(test)} {test.name} images, {len(names)} classes, each the mean "
                        f"embedding of {len(templates)} prompt(s) such as {templates[0]!r}"}
