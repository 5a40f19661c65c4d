"""A check's diagnostic inside an imported template carries the import chain and the instance."""

from pathlib import Path

from l3m.dsl import compile_file

ROOT = Path(__file__).resolve().parents[2]


def test_a_mistake_in_an_instance_argument_points_back_at_the_instance(tmp_path):
    text = (ROOT / "examples/vit_digits.l3m").read_text()
    text = text.replace('"../models/vit_imagenet.l3m"', f'"{ROOT / "models/vit_imagenet.l3m"}"')
    bad = tmp_path / "heads.l3m"
    bad.write_text(text.replace("heads = 2", "heads = 3"))
    compiled = compile_file(str(bad))
    [d] = [d for d in compiled.diagnostics if d.is_error]
    assert d.code == "E755" and d.span.file.endswith("vit_imagenet.l3m")
    assert d.span.chain and d.span.chain[0].startswith(f"{bad}:")  # editors show it at the import
    [(message, where)] = [n for n in d.notes if "instance" in n[0]]
    assert "'vit'" in message and where.file == str(bad)
    model_line = next(i for i, s in enumerate(bad.read_text().splitlines(), 1) if s.startswith("model vit"))
    assert where.line == model_line
