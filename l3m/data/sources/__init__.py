"""The registered data sources; importing this package registers them all.

| name | ports |
|---|---|
| DigitsImages | image, label |
| DigitsImageText | image, text, label |
| TextBytes, TextFiles, TextJSONL | tokens, targets, segments? |
| TokenShards | tokens, targets, segments? |
| ImageFolder | image, label |
| ImageTextJSONL | image, text |
| HFDataset | image?, text?, label? |
| Synthetic | input, target |
| Mixture | the keys its sources write |
| WebDataset | image?, text?, label? |
"""

from l3m.data.sources.base import Source, Spec, find_files
from l3m.data.sources.digits import DigitsImages, DigitsImageText
from l3m.data.sources.hf import HFDataset
from l3m.data.sources.images import ImageFolder, ImageTextJSONL
from l3m.data.sources.mixture import Mixture
from l3m.data.sources.shards import TokenShards
from l3m.data.sources.synthetic import Synthetic
from l3m.data.sources.text import TextBytes, TextFiles, TextJSONL
from l3m.data.sources.webdataset import WebDataset

__all__ = [
    "DigitsImageText",
    "DigitsImages",
    "HFDataset",
    "ImageFolder",
    "ImageTextJSONL",
    "Mixture",
    "Source",
    "Spec",
    "Synthetic",
    "TextBytes",
    "TextFiles",
    "TextJSONL",
    "WebDataset",
    "TokenShards",
    "find_files",
]
