"""CLIP's two evaluation protocols: zero-shot classification and image-text retrieval.

Zero-shot (Radford et al. 2021): each class name is put into every prompt template, the prompts
are embedded by the text tower, L2-normalised and averaged, and the average normalised again;
an image's class is the one whose embedding is most similar to the image's (top-1, top-5).
Retrieval: every image against every caption by cosine similarity; image->text recall@k counts an
image as found when any of its captions ranks in the top k, text->image when its image does
(captions that share an image path belong to one image, as COCO's five captions do).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from l3m.evals import data
from l3m.evals.errors import EvalInputError
from l3m.evals.model import EvalModel

RECALL_KS = (1, 5, 10)


# -- the protocols on embeddings ------------------------------------------------------------------


def class_embeddings(embed_text: Callable[[list[str]], torch.Tensor], names: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """[C, D]: per class, the normalised mean of its normalised prompt embeddings."""
    out = []
    for name in names:
        emb = F.normalize(embed_text([t.format(name) for t in templates]).float(), dim=-1)
        out.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest scores, for each k."""
    top = scores.topk(max(ks), dim=-1).indices
    hit = top == labels[:, None]
    return {k: float(hit[:, :k].any(dim=-1).float().mean()) for k in ks}


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor,
                     ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """`text_image[j]`: the image index of caption j. Recall@k both ways (k past the candidates
    counts every candidate)."""
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).t()  # [I, T]
    n_img, n_txt = sim.shape
    out: dict[str, float] = {}
    i2t_rank = sim.argsort(dim=1, descending=True)  # texts by similarity, per image
    owns = text_image[i2t_rank] == torch.arange(n_img)[:, None]  # [I, T]: ranked text belongs to the image
    t2i_rank = sim.t().argsort(dim=1, descending=True)  # images by similarity, per text
    right = t2i_rank == text_image[:, None]
    for k in ks:
        out[f"image_to_text_R@{k}"] = float(owns[:, : min(k, n_txt)].any(dim=1).float().mean())
    for k in ks:
        out[f"text_to_image_R@{k}"] = float(right[:, : min(k, n_img)].any(dim=1).float().mean())
    return out


# -- the towers of an l3m model -------------------------------------------------------------------


def embedding_keys(m: EvalModel, args: argparse.Namespace) -> tuple[str, str, str, str]:
    """(image input key, text input key, image embedding key, text embedding key): the flags, else
    the keys the program's contrastive loss reads and its image-text source writes."""
    ports = next((p for p in m.source_ports().values() if "image" in p and "text" in p), {})
    image_in = ports.get("image", "image")
    text_in = ports.get("text", "text")
    image_emb = args.image_emb or m.loss_input_key("image_emb")
    text_emb = args.text_emb or m.loss_input_key("text_emb")
    if not image_emb or not text_emb:
        raise EvalInputError("this model has no CLIP loss reading image_emb and text_emb, so it looks like no "
                             "two-tower image-text model; if it is one, name its embedding keys with "
                             "--image-emb KEY and --text-emb KEY")
    for key in (image_emb, text_emb):
        if key not in m.model.output_keys:
            raise EvalInputError(f"the model writes no key '{key}' (it writes {', '.join(m.model.output_keys)})")
    return image_in, text_in, image_emb, text_emb


def _embed(m: EvalModel, key_in: str, key_out: str, x: torch.Tensor) -> torch.Tensor:
    d = m.run(m.with_generators({key_in: x}))
    if key_out not in d:
        raise EvalInputError(f"'{key_out}' cannot be computed from '{key_in}' alone: is it a tower of its own?")
    return d[key_out].float().cpu()


def text_embedder(m: EvalModel, args: argparse.Namespace, text_in: str, text_emb: str):
    encoder = data.caption_encoder(m.sources)

    def embed(texts: list[str]) -> torch.Tensor:
        ids = data.encode_texts(encoder, texts)
        return torch.cat([_embed(m, text_in, text_emb, ids[i:i + args.batch_size])
                          for i in range(0, len(ids), args.batch_size)])

    return embed, encoder


def zeroshot_suite(m: EvalModel, args: argparse.Namespace) -> dict[str, float]:
    if not args.images:
        raise EvalInputError("--suite clip-zeroshot needs --images DIR (one folder per class)")
    image_in, text_in, image_emb, text_emb = embedding_keys(m, args)
    settings = data.image_settings(m.sources, args.image_size)
    src = data.image_folder(args.images, settings)
    names = data.class_names(src.classes, args.classes)
    embed_text, _ = text_embedder(m, args, text_in, text_emb)
    classes = class_embeddings(embed_text, names, data.templates(args.templates))
    scores, labels = [], []
    for batch in data.batches(src, args.batch_size, ("image", "label")):
        img = F.normalize(_embed(m, image_in, image_emb, batch["image"]), dim=-1)
        scores.append(img @ classes.t())
        labels.append(batch["label"])
    ks = (1, 5) if len(names) > 5 else (1,)
    acc = topk_accuracy(torch.cat(scores), torch.cat(labels), ks)
    return {**{f"top{k}": v for k, v in acc.items()}, "classes": len(names), "samples": int(torch.cat(labels).numel())}


def retrieval_suite(m: EvalModel, args: argparse.Namespace) -> dict[str, float]:
    if not args.pairs:
        raise EvalInputError("--suite clip-retrieval needs --pairs FILE.jsonl ({\"image\": PATH, \"text\": CAPTION} "
                             "per line)")
    image_in, text_in, image_emb, text_emb = embedding_keys(m, args)
    settings = data.image_settings(m.sources, args.image_size)
    embed_text, encoder = text_embedder(m, args, text_in, text_emb)
    src = data.image_text_pairs(args.pairs, settings, encoder)
    paths = [p for p, _ in src.records]
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        first.setdefault(p, i)
    image_rows = list(first.values())  # one row per distinct image
    index = {p: j for j, p in enumerate(first)}
    text_image = torch.tensor([index[p] for p in paths])
    images = []
    for start in range(0, len(image_rows), args.batch_size):
        rows = image_rows[start:start + args.batch_size]
        x = torch.stack([src[i]["image"] for i in rows])
        images.append(_embed(m, image_in, image_emb, x))
    texts = embed_text([t for _, t in src.records])
    return {**retrieval_recall(torch.cat(images), texts, text_image), "images": len(image_rows),
            "texts": len(paths)}
