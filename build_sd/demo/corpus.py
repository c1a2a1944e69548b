"""English->German sentence pairs from the gettext catalogs of the machine.

Debian packages ship their German UI translations as compiled gettext catalogs
(``/usr/share/locale/de/LC_MESSAGES/*.mo``): human translations of short messages, the
kind of input an edge assistant sees. This module reads them with the standard library
only (the .mo format is parsed here with :mod:`struct`), keeps the entries that are real
sentence pairs, cleans them and splits them deterministically:

* dropped: the header entry (empty msgid), plural forms (msgid holding ``\\x00``), empty or
  untranslated (identical) pairs, pairs with fewer than ``MIN_EN_WORDS`` English words,
  pairs longer than ``MAX_CHARS`` characters on either side, entries that do not decode;
* message contexts (``msgctxt`` + ``\\x04`` + msgid) are stripped, the message is kept;
* menu accelerators are removed (``_File`` / ``&File`` -> ``File``, also ``Ö_ffnen`` in
  the translation of an accelerated message); ``&amp;``-style entities, ``&&``, ``2>&1``,
  ``snake_case`` identifiers and printf placeholders (``%s``, ``%1$s``, ``%-10lu``) stay;
* whitespace (newlines, tabs) is collapsed to single spaces;
* duplicates are removed by English text (the first catalog in name order wins);
* the split is a function of the English text alone (:func:`split_of`: SHA-1 of it), so a
  sentence lands in the same split on every machine and with any set of catalogs.

The test split is committed (``data/test.tsv``, read by :func:`load_split`); train and
valid are rebuilt from the machine's catalogs (:func:`split_pairs`).

CLI: ``python -m build_sd.demo.corpus --stats`` (per-catalog counts and split sizes),
``--write-test`` (rewrite ``data/test.tsv`` from this machine's catalogs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from build_sd.demo import DATA_DIR

CATALOG_DIR = Path("/usr/share/locale/de/LC_MESSAGES")
TEST_TSV = DATA_DIR / "test.tsv"
TSV_HEADER = ("en", "de", "catalog")

MIN_EN_WORDS = 3
MAX_CHARS = 200
# Split by the SHA-1 of the English text: fraction of the 2**32 hash range per split.
VALID_FRACTION = 0.010
TEST_FRACTION = 0.015
SPLITS = ("train", "valid", "test")

_MO_MAGIC_LE = 0x950412DE
_MO_MAGIC_BE = 0xDE120495


@dataclass(frozen=True)
class Pair:
    en: str
    de: str
    catalog: str  # catalog file stem, e.g. "coreutils"


# ---------------------------------------------------------------------------------------
# .mo parsing
# ---------------------------------------------------------------------------------------


class MoError(ValueError):
    pass


def parse_mo_raw(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (msgid, msgstr) byte strings of a GNU .mo catalog, in file order.

    Layout (GNU gettext manual, "The Format of GNU MO Files"): a 4-byte magic that also
    fixes the byte order, the revision, the number of strings N, the offsets of the table
    of original strings and of the table of translations; each table holds N
    (length, offset) pairs of 32-bit integers.
    """
    if len(data) < 28:
        raise MoError("file too short for a .mo header")
    (magic,) = struct.unpack("<I", data[:4])
    if magic == _MO_MAGIC_LE:
        end = "<"
    elif magic == _MO_MAGIC_BE:
        end = ">"
    else:
        raise MoError(f"bad .mo magic {magic:#010x}")
    revision, n, orig_off, trans_off = struct.unpack(end + "4I", data[4:20])
    if revision >> 16 not in (0, 1):
        raise MoError(f"unsupported .mo major revision {revision >> 16}")
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        olen, opos = struct.unpack_from(end + "2I", data, orig_off + 8 * i)
        tlen, tpos = struct.unpack_from(end + "2I", data, trans_off + 8 * i)
        if opos + olen > len(data) or tpos + tlen > len(data):
            raise MoError(f"string {i} lies outside the file")
        out.append((data[opos : opos + olen], data[tpos : tpos + tlen]))
    return out


_CHARSET_RE = re.compile(rb"charset\s*=\s*([A-Za-z0-9_.:\-]+)", re.IGNORECASE)


def catalog_charset(raw: list[tuple[bytes, bytes]]) -> str:
    """The charset that the header entry (empty msgid) declares; UTF-8 when none does."""
    for msgid, msgstr in raw:
        if msgid == b"":
            for line in msgstr.split(b"\n"):
                if line.lower().startswith(b"content-type:"):
                    m = _CHARSET_RE.search(line)
                    if m:
                        name = m.group(1).decode("ascii")
                        if name.upper() in ("CHARSET", ""):  # the template's placeholder
                            return "utf-8"
                        return name
            break
    return "utf-8"


def read_catalog(data: bytes) -> tuple[list[tuple[str, str]], Counter]:
    """Decoded (msgid, msgstr) of a catalog's singular, translated entries.

    Drops the header, plural forms and entries that do not decode; strips contexts.
    Returns the entries and a Counter of why others were dropped.
    """
    raw = parse_mo_raw(data)
    charset = catalog_charset(raw)
    try:
        "".encode(charset)
    except LookupError:
        charset = "utf-8"
    dropped: Counter = Counter()
    out: list[tuple[str, str]] = []
    for msgid, msgstr in raw:
        if msgid == b"":
            dropped["header"] += 1
            continue
        if b"\x00" in msgid:
            dropped["plural"] += 1
            continue
        if b"\x04" in msgid:  # msgctxt EOT msgid
            msgid = msgid.split(b"\x04", 1)[1]
        try:
            en = msgid.decode(charset)
            de = msgstr.decode(charset)
        except UnicodeDecodeError:
            dropped["undecodable"] += 1
            continue
        out.append((en, de))
    return out, dropped


# ---------------------------------------------------------------------------------------
# cleaning
# ---------------------------------------------------------------------------------------

# An accelerator marker at the start of a word, followed by a letter or digit:
# "_File", "(_Open)", "&Save". Not in identifiers (foo_bar, __init__), not "&&", not "2>&1".
_ACCEL_START_RE = re.compile(r"(?:(?<=^)|(?<=[\s(\[\"'«„“/]))([_&])(?=[^\W_])")
_ENTITY_RE = re.compile(r"&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);")
_WS_RE = re.compile(r"\s+")


def _has_accelerator(s: str) -> str | None:
    """The accelerator character ('_' or '&') that s uses, if it has exactly one marker."""
    body = _ENTITY_RE.sub(lambda m: "\x01" * len(m.group(0)), s)
    for ch in "_&":
        if body.count(ch) != 1:
            continue
        if any(m.group(1) == ch for m in _ACCEL_START_RE.finditer(body)):
            return ch
    return None


def _strip_marker(s: str, ch: str, anywhere: bool) -> str:
    """Remove one accelerator marker ch from s: at a word start, or (anywhere=True, for the
    translation of an accelerated message: "Ö_ffnen") before any letter, when s holds
    exactly one such marker."""
    if ch == "&":
        body = _ENTITY_RE.sub(lambda m: "\x01" * len(m.group(0)), s)
    else:
        body = s
    if anywhere:
        pos = [m.start() for m in re.finditer(re.escape(ch) + r"(?=[^\W_])", body)]
        pos = [p for p in pos if not (p > 0 and body[p - 1] == ch)]
        if body.count(ch) == 1 and len(pos) == 1:
            return s[: pos[0]] + s[pos[0] + 1 :]
        # several markers: fall back to word starts only
    for m in _ACCEL_START_RE.finditer(body):
        if m.group(1) == ch:
            return s[: m.start()] + s[m.start() + 1 :]
    return s


def strip_accelerators(en: str, de: str) -> tuple[str, str]:
    """Remove the menu accelerator of a message and of its translation, if it has one."""
    ch = _has_accelerator(en)
    if ch is None:
        return en, de
    return _strip_marker(en, ch, anywhere=False), _strip_marker(de, ch, anywhere=True)


def normalize_ws(s: str) -> str:
    return _WS_RE.sub(" ", s).strip()


def clean_pair(en: str, de: str) -> tuple[str, str] | None:
    """The cleaned pair, or None when it is not a usable sentence pair."""
    en, de = strip_accelerators(en, de)
    en, de = normalize_ws(en), normalize_ws(de)
    if not en or not de or en == de:
        return None
    if len(en.split()) < MIN_EN_WORDS:
        return None
    if len(en) > MAX_CHARS or len(de) > MAX_CHARS:
        return None
    if "\t" in en or "\t" in de:  # cannot happen after normalize_ws; keeps the TSV sound
        return None
    return en, de


# ---------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------


def catalog_paths(catalog_dir: Path | str = CATALOG_DIR) -> list[Path]:
    """The .mo files of the directory in name order, each real file once (symlinks such
    as iso_639.mo -> iso_639-2.mo are skipped)."""
    d = Path(catalog_dir)
    if not d.is_dir():
        return []
    seen: set[str] = set()
    out = []
    for p in sorted(d.glob("*.mo")):
        if p.is_symlink():
            continue
        real = os.path.realpath(p)
        if real in seen:
            continue
        seen.add(real)
        out.append(p)
    return out


@dataclass
class CatalogStats:
    catalog: str
    entries: int = 0
    kept: int = 0  # pairs that passed the filters and were new (not duplicates)
    dropped: Counter | None = None


def load_pairs_with_stats(
    catalog_dir: Path | str = CATALOG_DIR,
) -> tuple[list[Pair], list[CatalogStats]]:
    pairs: list[Pair] = []
    stats: list[CatalogStats] = []
    seen_en: set[str] = set()
    for path in catalog_paths(catalog_dir):
        st = CatalogStats(path.stem, dropped=Counter())
        try:
            entries, dropped = read_catalog(path.read_bytes())
        except (OSError, MoError, struct.error) as e:
            st.dropped["unreadable"] += 1
            print(f"warning: {path}: {e}", file=sys.stderr)
            stats.append(st)
            continue
        st.dropped.update(dropped)
        st.entries = len(entries) + sum(dropped.values())
        for en, de in entries:
            c = clean_pair(en, de)
            if c is None:
                st.dropped["filtered"] += 1
                continue
            if c[0] in seen_en:
                st.dropped["duplicate"] += 1
                continue
            seen_en.add(c[0])
            pairs.append(Pair(c[0], c[1], path.stem))
            st.kept += 1
        stats.append(st)
    return pairs, stats


def load_pairs(catalog_dir: Path | str = CATALOG_DIR) -> list[Pair]:
    """All cleaned, de-duplicated pairs of the machine's German catalogs."""
    return load_pairs_with_stats(catalog_dir)[0]


def split_of(en: str) -> str:
    """'train', 'valid' or 'test': a function of the English text alone."""
    h = int.from_bytes(hashlib.sha1(en.encode("utf-8")).digest()[:4], "big") / 2**32
    if h < VALID_FRACTION:
        return "valid"
    if h < VALID_FRACTION + TEST_FRACTION:
        return "test"
    return "train"


def split_pairs(pairs: list[Pair]) -> dict[str, list[Pair]]:
    """The pairs by split, each in input order."""
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for p in pairs:
        out[split_of(p.en)].append(p)
    return out


def write_tsv(pairs: list[Pair], path: Path | str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(TSV_HEADER) + "\n")
        for p in pairs:
            f.write(f"{p.en}\t{p.de}\t{p.catalog}\n")


def read_tsv(path: Path | str) -> list[Pair]:
    out = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if tuple(header) != TSV_HEADER:
            raise ValueError(f"{path}: unexpected header {header}")
        for line in f:
            line = line.rstrip("\n")
            if line:
                en, de, cat = line.split("\t")
                out.append(Pair(en, de, cat))
    return out


def load_split(name: str, catalog_dir: Path | str = CATALOG_DIR) -> list[Pair]:
    """One split. 'test' is read from the committed data/test.tsv; 'train' and 'valid' are
    rebuilt from the catalogs (minus anything in the committed test set)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}")
    if name == "test":
        return read_tsv(TEST_TSV)
    pairs = split_pairs(load_pairs(catalog_dir))[name]
    if TEST_TSV.exists():
        test_en = {p.en for p in read_tsv(TEST_TSV)}
        pairs = [p for p in pairs if p.en not in test_en]
    return pairs


def _print_stats(catalog_dir: Path | str) -> None:
    pairs, stats = load_pairs_with_stats(catalog_dir)
    splits = split_pairs(pairs)
    print(f"catalogs: {catalog_dir} ({len(stats)} files)")
    print(f"{'catalog':32s} {'entries':>8s} {'kept':>6s}  dropped")
    for st in stats:
        dr = ", ".join(f"{k} {v}" for k, v in sorted(st.dropped.items()))
        print(f"{st.catalog:32s} {st.entries:8d} {st.kept:6d}  {dr}")
    print(f"pairs: {len(pairs)}  " + "  ".join(f"{s}: {len(v)}" for s, v in splits.items()))
    if pairs:
        en_words = sum(len(p.en.split()) for p in pairs) / len(pairs)
        de_words = sum(len(p.de.split()) for p in pairs) / len(pairs)
        print(f"mean words: en {en_words:.1f}  de {de_words:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build_sd.demo.corpus", description=__doc__.split("\n")[0])
    ap.add_argument("--catalogs", default=str(CATALOG_DIR), help="directory of .mo files")
    ap.add_argument("--stats", action="store_true", help="per-catalog counts and split sizes")
    ap.add_argument("--write-test", action="store_true", help=f"rewrite {TEST_TSV}")
    ap.add_argument("--show", type=int, default=0, metavar="N", help="print N random pairs")
    args = ap.parse_args(argv)
    if not (args.stats or args.write_test or args.show):
        args.stats = True
    if args.stats:
        _print_stats(args.catalogs)
    if args.write_test:
        test = split_pairs(load_pairs(args.catalogs))["test"]
        TEST_TSV.parent.mkdir(parents=True, exist_ok=True)
        write_tsv(test, TEST_TSV)
        print(f"wrote {len(test)} pairs to {TEST_TSV}")
    if args.show:
        import random

        pairs = load_pairs(args.catalogs)
        for p in random.Random(0).sample(pairs, min(args.show, len(pairs))):
            print(f"[{p.catalog}] {p.en}\n    => {p.de}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
