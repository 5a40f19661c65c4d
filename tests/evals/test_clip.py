"""CLIP's zero-shot and retrieval protocols: on known embeddings, and end to end on a model whose
towers are built so that the right answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_utils import COLORS, color_folders, save_weights

from l3m.cli import main
from l3m.evals.clip import class_embeddings, retrieval_recall, topk_accuracy

# Image tower: each channel's mean, as is; text tower: the mean of the token embeddings, where the
# byte of class "a" / "b" / "c" embeds as the red / green / blue axis and every other token as 0.
KNOWN_TOWERS = """l3m 1
def ImageTower() image -> emb, logit_scale {
  postprocessor { pool: GlobalAvgPool()  image -> x }
  head          { proj: ClipProjection(in_dim = 3, out_dim = 3, bias = false)  x -> emb, logit_scale }
}
def TextTower() text -> emb {
  preprocessor  { embed: TokenEmbedding(vocab = 259, dim = 3)  text -> x }
  postprocessor { pool: AvgPool()  x -> x }
  head          { proj: ClipProjection(in_dim = 3, out_dim = 3, bias = false, learn_scale = false)  x -> emb }
}
data { train: DigitsImageText(split = train, image_size = 16, seq_len = 32, batch_size = 8) -> image, text, label }
model clip {
  model image = ImageTower()  image -> image_emb, logit_scale
  model text  = TextTower()   text -> text_emb
}
loss contrastive: ClipLoss()  image_emb, text_emb, logit_scale -> loss
"""


def _known(model) -> None:
    for name, p in model.named_parameters():
        if name.endswith("proj.proj.weight"):
            p.copy_(torch.eye(3))
        elif name.endswith("embed.emb.weight"):
            p.zero_()
            for axis, letter in enumerate("abc"):
                p[ord(letter) + 3, axis] = 1.0  # l3m's caption bytes are shifted by 3


@pytest.fixture
def known_clip(tmp_path: Path) -> tuple[Path, Path]:
    program = tmp_path / "known.l3m"
    program.write_text(KNOWN_TOWERS)
    return program, save_weights(tmp_path / "known.safetensors", program, [], _known)


def test_topk_accuracy_counts_rows_whose_label_ranks_high_enough():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.3, 0.2], [0.1, 0.3, 0.2]])
    acc = topk_accuracy(scores, torch.tensor([0, 0, 2]), (1, 2))
    assert acc[1] == pytest.approx(1 / 3)
    assert acc[2] == pytest.approx(2 / 3)


def test_class_embeddings_average_the_normalised_prompts():
    table = {"x one": [2.0, 0.0], "x two": [0.0, 1.0], "y one": [0.0, 3.0], "y two": [0.0, 1.0]}
    emb = class_embeddings(lambda texts: torch.tensor([table[t] for t in texts]), ["one", "two"], ["x {}", "y {}"])
    s = 2 ** -0.5
    assert torch.allclose(emb, torch.tensor([[s, s], [0.0, 1.0]]))


def test_retrieval_recall_on_known_embeddings():
    images = torch.eye(3)
    # captions 0, 1 belong to image 0, caption 2 to image 1, caption 3 to image 2 (but is closer to image 1)
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0.9, 0.2]])
    r = retrieval_recall(images, texts, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert r["image_to_text_R@1"] == 1.0  # each image's closest caption is one of its own
    assert r["text_to_image_R@1"] == pytest.approx(3 / 4)
    assert r["text_to_image_R@2"] == pytest.approx(1.0)


def test_zero_shot_on_towers_built_to_know_the_answer(known_clip, tmp_path, capsys):
    program, weights = known_clip
    images = color_folders(tmp_path / "images", 3)
    (tmp_path / "templates.txt").write_text("{}\n")
    code = main(["eval", str(program), "--checkpoint", str(weights), "--suite", "clip-zeroshot",
                 "--images", str(images), "--templates", str(tmp_path / "templates.txt"), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"]["top1"] == 1.0 and out["results"]["classes"] == len(COLORS)
    # naming the classes in the wrong order makes every answer wrong
    (tmp_path / "classes.txt").write_text("b\nc\na\n")
    code = main(["eval", str(program), "--checkpoint", str(weights), "--suite", "clip-zeroshot", "--images",
                 str(images), "--templates", str(tmp_path / "templates.txt"), "--classes",
                 str(tmp_path / "classes.txt"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["results"]["top1"] == 0.0


def test_retrieval_end_to_end(known_clip, tmp_path, capsys):
    program, weights = known_clip
    color_folders(tmp_path / "images", 1)
    # two captions per image (lines that share an image path are one image's captions, as COCO's five)
    lines = [{"image": f"images/{c}/0.png", "text": t} for c in "abc" for t in (c, c + c)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    code = main(["eval", str(program), "--checkpoint", str(weights), "--suite", "clip-retrieval",
                 "--pairs", str(tmp_path / "pairs.jsonl"), "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)["results"]
    assert r["images"] == 3 and r["texts"] == 6
    assert r["image_to_text_R@1"] == 1.0 and r["text_to_image_R@1"] == 1.0


@pytest.mark.parametrize("flags, message", [
    ([], "--images DIR"),
    (["--images", "nowhere"], "no such image folder"),
    (["--images", "IMAGES", "--classes", "CLASSES"], "names 1 classes"),
    (["--images", "IMAGES", "--templates", "TEMPLATES"], "exactly one '{}'"),
])
def test_bad_input_is_one_line_and_exit_2(known_clip, tmp_path, capsys, flags, message):
    program, weights = known_clip
    images = color_folders(tmp_path / "images", 1)
    (tmp_path / "c.txt").write_text("only\n")
    (tmp_path / "t.txt").write_text("no slot\n")
    subst = {"IMAGES": str(images), "CLASSES": str(tmp_path / "c.txt"), "TEMPLATES": str(tmp_path / "t.txt")}
    code = main(["eval", str(program), "--checkpoint", str(weights), "--suite", "clip-zeroshot",
                 *[subst.get(f, f) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_file_without_checkpoint_or_a_missing_target_is_a_usage_error(known_clip, capsys):
    program, _ = known_clip
    assert main(["eval", str(program), "--suite", "clip-zeroshot"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["eval", "no/such/run", "--suite", "clip-zeroshot"]) == 2
