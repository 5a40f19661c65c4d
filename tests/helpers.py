"""Paths shared by tests (importable because pytest puts tests/ on sys.path)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "models").glob("*.l3m")) + sorted((ROOT / "examples").glob("*.l3m"))
EXAMPLES = sorted((ROOT / "examples").glob("*.l3m"))
