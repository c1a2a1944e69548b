"""Sequence-level distillation data for the draft: the target's greedy translations of the
train (and valid) English, and further English inputs from the other locales' catalogs."""

from __future__ import annotations

import time
from pathlib import Path


def extra_english(catalog_root: Path = Path("/usr/share/locale")) -> list[tuple[str, str]]:
    """(english, "locale:catalog") of the msgids that other locales' catalogs translate but
    the German corpus lacks: cleaned like the corpus (accelerators, whitespace, >= 3 words,
    <= 200 characters), de-duplicated, and only those that corpus.split_of puts in 'train'
    (so no valid or test sentence can appear). Inputs for distillation only."""
    import struct as _struct

    from build_sd.demo.corpus import (
        MAX_CHARS,
        MIN_EN_WORDS,
        MoError,
        catalog_paths,
        load_pairs,
        normalize_ws,
        read_catalog,
        split_of,
        strip_accelerators,
    )

    seen = {p.en for p in load_pairs()}
    out = []
    for loc in sorted(d for d in catalog_root.iterdir() if d.is_dir() and d.name != "de"):
        for path in catalog_paths(loc / "LC_MESSAGES"):
            try:
                entries, _ = read_catalog(path.read_bytes())
            except (OSError, MoError, _struct.error):
                continue
            for en, tr in entries:
                if not tr.strip():
                    continue
                en = normalize_ws(strip_accelerators(en, tr)[0])
                if en in seen or len(en.split()) < MIN_EN_WORDS or len(en) > MAX_CHARS or "\t" in en:
                    continue
                seen.add(en)
                if split_of(en) == "train":
                    out.append((en, f"{loc.name}:{path.stem}"))
    return out


def distil_split(model, tok, train, out: Path, batch: int) -> None:
    """Write to ``out`` the model's greedy translations of these pairs' English, keeping
    those that end with ``</s>`` within the length cap."""
    from build_sd.demo.corpus import Pair, write_tsv
    from build_sd.demo.infer import translate

    t0 = time.time()

    def prog(i, n):
        if i % (batch * 10) < batch or i == n:
            el = time.time() - t0
            print(f"{time.strftime('%H:%M:%S')} distil {i}/{n} {el / 60:.1f} min ETA {el / i * (n - i) / 60:.1f} min", flush=True)

    res = translate(model, tok, [p.en for p in train], batch_size=batch, progress=prog, with_finished=True, length_cap=(1.5, 8))
    outs = [o for o, _ in res]
    kd = [
        Pair(p.en, " ".join(o.split()), p.catalog)
        for p, (o, finished) in zip(train, res)
        if finished and o.strip()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(kd, out)
    same = sum(p.de == o for p, o in zip(train, outs))
    print(f"wrote {len(kd)} pairs to {out}; {same} equal to the reference; {(time.time() - t0) / 60:.1f} min")
