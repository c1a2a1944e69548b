"""The embedded demo pair: a small English->German target and its draft.

Both are Llama-architecture models trained here (``train.py``) on human translations taken
from the gettext catalogs that Debian packages ship (``corpus.py``), with one shared BPE
tokenizer (``tokenizer.py``). The trained weights live in ``models/target`` and
``models/draft`` (HF layout, f16 safetensors); ``evaluate.py`` measures their quality and
the pair's acceptance rate.
"""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
MODELS_DIR = DEMO_DIR / "models"
TARGET_DIR = MODELS_DIR / "target"
DRAFT_DIR = MODELS_DIR / "draft"
DATA_DIR = DEMO_DIR / "data"
RUNS_DIR = DEMO_DIR / "runs"

__all__ = ["DEMO_DIR", "MODELS_DIR", "TARGET_DIR", "DRAFT_DIR", "DATA_DIR", "RUNS_DIR"]
