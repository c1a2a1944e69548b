"""The demo pair's data pipeline: .mo parsing and cleaning, the deterministic split, the
tokenizer's round trip and prompt format. Fast: builds its own tiny catalogs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from build_sd.demo import corpus
from build_sd.demo.corpus import (
    Pair,
    clean_pair,
    load_pairs_with_stats,
    parse_mo_raw,
    read_catalog,
    read_tsv,
    split_of,
    split_pairs,
    strip_accelerators,
    write_tsv,
)


def make_mo(entries: list[tuple[bytes, bytes]], big_endian: bool = False) -> bytes:
    """A GNU .mo file (no hash table) holding entries, sorted by msgid as msgfmt does."""
    entries = sorted(entries, key=lambda e: e[0])
    end = ">" if big_endian else "<"
    n = len(entries)
    orig_off = 28
    trans_off = orig_off + 8 * n
    data_off = trans_off + 8 * n
    blob = b""
    otab, ttab = [], []
    for msgid, _ in entries:
        otab.append((len(msgid), data_off + len(blob)))
        blob += msgid + b"\x00"
    for _, msgstr in entries:
        ttab.append((len(msgstr), data_off + len(blob)))
        blob += msgstr + b"\x00"
    head = struct.pack(end + "7I", 0x950412DE, 0, n, orig_off, trans_off, 0, data_off)
    tabs = b"".join(struct.pack(end + "2I", *e) for e in otab + ttab)
    return head + tabs + blob


def header(charset: str) -> tuple[bytes, bytes]:
    return (
        b"",
        (
            "Project-Id-Version: demo 1.0\n"
            "Language: de\n"
            "MIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset={charset}\n"
            "Content-Transfer-Encoding: 8bit\n"
            "Plural-Forms: nplurals=2; plural=(n != 1);\n"
        ).encode("ascii"),
    )


UTF8_ENTRIES = [
    header("UTF-8"),
    (b"Could not open the file %s", "Die Datei %s konnte nicht geöffnet werden".encode()),
    (b"%d file was removed\x00%d files were removed", "%d Datei wurde entfernt\x00%d Dateien wurden entfernt".encode()),
    (b"menu\x04Save the current document", "Das aktuelle Dokument speichern".encode()),
    (b"_Open Recent Files", "Zuletzt geöffnete Dateien ö_ffnen".encode()),
    (b"Open", "Öffnen".encode()),  # too short
    (b"This is not translated at all", b"This is not translated at all"),  # identical
    (b"Print the\n  usage   message", "Die\nHilfe ausgeben".encode()),
    (b"See %1$s and %2$-10lu for more", "Siehe %1$s und %2$-10lu für mehr".encode()),
    (b"Entities like &amp; stay as they are", "Entitäten wie &amp; bleiben, wie sie sind".encode()),
    (b"run cmd 2>&1 && more stuff", "cmd 2>&1 && mehr Zeug ausführen".encode()),
    (b"set max_wal_size to a bigger value", "max_wal_size auf einen größeren Wert setzen".encode()),
    (b"A very long message " + b"x" * 300, b"Eine sehr lange Nachricht"),
]

LATIN1_ENTRIES = [
    header("ISO-8859-1"),
    (b"Unable to create the directory", "Verzeichnis konnte nicht erzeugt werden: Größe überschritten".encode("latin-1")),
    (b"&Quit the application now", "Anwendung jetzt &beenden".encode("latin-1")),
]


@pytest.fixture()
def catalogs(tmp_path: Path) -> Path:
    (tmp_path / "demo.mo").write_bytes(make_mo(UTF8_ENTRIES))
    (tmp_path / "legacy.mo").write_bytes(make_mo(LATIN1_ENTRIES, big_endian=True))
    (tmp_path / "alias.mo").symlink_to(tmp_path / "demo.mo")  # like iso_639.mo -> iso_639-2.mo
    return tmp_path


def test_parse_mo_raw_both_byte_orders():
    entries = [header("UTF-8"), (b"a b c", b"x y z")]
    for be in (False, True):
        raw = parse_mo_raw(make_mo(entries, big_endian=be))
        assert dict(raw)[b"a b c"] == b"x y z"
    with pytest.raises(corpus.MoError):
        parse_mo_raw(b"\x00" * 40)


def test_read_catalog_drops_header_and_plurals_and_strips_context():
    entries, dropped = read_catalog(make_mo(UTF8_ENTRIES))
    d = dict(entries)
    assert dropped["header"] == 1 and dropped["plural"] == 1
    assert "" not in d
    assert not any("\x00" in en for en in d)
    assert d["Save the current document"] == "Das aktuelle Dokument speichern"
    assert not any("\x04" in en for en in d)


def test_non_utf8_charset_is_decoded():
    entries, _ = read_catalog(make_mo(LATIN1_ENTRIES, big_endian=True))
    d = dict(entries)
    assert d["Unable to create the directory"] == "Verzeichnis konnte nicht erzeugt werden: Größe überschritten"


def test_clean_pair_rules():
    assert clean_pair("Open", "Öffnen") is None  # fewer than 3 English words
    assert clean_pair("same text here", "same text here") is None
    assert clean_pair("one two three", "") is None
    assert clean_pair("one two three " + "x" * 300, "eins") is None
    assert clean_pair("Print the\n  usage   message", "Die\nHilfe\tausgeben") == (
        "Print the usage message",
        "Die Hilfe ausgeben",
    )
    # printf placeholders untouched
    assert clean_pair("See %1$s and %2$-10lu for more", "Siehe %1$s und %2$-10lu für mehr") == (
        "See %1$s and %2$-10lu for more",
        "Siehe %1$s und %2$-10lu für mehr",
    )


def test_accelerators():
    assert strip_accelerators("_Open Recent Files", "Zuletzt geöffnete Dateien ö_ffnen") == (
        "Open Recent Files",
        "Zuletzt geöffnete Dateien öffnen",
    )
    assert strip_accelerators("Save _As…", "Speichern _unter …") == ("Save As…", "Speichern unter …")
    assert strip_accelerators("&Quit the application", "Anwendung &beenden") == (
        "Quit the application",
        "Anwendung beenden",
    )
    # not accelerators: entities, shell operators, identifiers, placeholders
    for en, de in [
        ("Entities like &amp; stay as they are", "Entitäten wie &amp; bleiben"),
        ("run cmd 2>&1 && more", "cmd 2>&1 && mehr"),
        ("set max_wal_size to a bigger value", "max_wal_size größer setzen"),
        ("lookup _http._tcp records", "_http._tcp-Einträge abfragen"),
        ("value %s_%d is invalid", "Wert %s_%d ist ungültig"),
    ]:
        assert strip_accelerators(en, de) == (en, de)


def test_load_pairs(catalogs: Path):
    pairs, stats = load_pairs_with_stats(catalogs)
    by_en = {p.en: p for p in pairs}
    assert [s.catalog for s in stats] == ["demo", "legacy"]  # the symlink is skipped
    assert by_en["Could not open the file %s"].de == "Die Datei %s konnte nicht geöffnet werden"
    assert by_en["Save the current document"].de == "Das aktuelle Dokument speichern"
    assert by_en["Open Recent Files"].de == "Zuletzt geöffnete Dateien öffnen"
    assert by_en["Quit the application now"].de == "Anwendung jetzt beenden"
    assert by_en["Unable to create the directory"].catalog == "legacy"
    assert "Größe" in by_en["Unable to create the directory"].de
    assert "Open" not in by_en
    assert "This is not translated at all" not in by_en
    assert not any(en.startswith("A very long") for en in by_en)
    assert not any("%d file" in en for en in by_en)
    assert len(by_en) == len(pairs)  # de-duplicated
    for p in pairs:
        assert "\n" not in p.en + p.de and "\t" not in p.en + p.de and p.en == p.en.strip()


def test_dedup_by_english_first_catalog_wins(tmp_path: Path):
    (tmp_path / "a.mo").write_bytes(make_mo([header("UTF-8"), (b"one two three", b"eins zwei drei")]))
    (tmp_path / "b.mo").write_bytes(make_mo([header("UTF-8"), (b"one two three", b"anders")]))
    pairs, stats = load_pairs_with_stats(tmp_path)
    assert pairs == [Pair("one two three", "eins zwei drei", "a")]
    assert stats[1].dropped["duplicate"] == 1


def test_split_is_deterministic():
    sentences = [f"Could not open file number {i} for reading" for i in range(3000)]
    pairs = [Pair(s, f"Datei {i}", "x") for i, s in enumerate(sentences)]
    a = split_pairs(pairs)
    b = split_pairs(list(reversed(pairs)))
    for name in ("train", "valid", "test"):
        assert {p.en for p in a[name]} == {p.en for p in b[name]}
    # an English sentence always lands in the same split, whatever else is in the corpus
    for s in sentences[:200]:
        assert split_of(s) == split_of(s)
        assert s in {p.en for p in split_pairs([Pair(s, "d", "x")])[split_of(s)]}
    n = len(pairs)
    assert 0.003 * n < len(a["valid"]) < 0.03 * n
    assert 0.005 * n < len(a["test"]) < 0.04 * n
    assert len(a["train"]) + len(a["valid"]) + len(a["test"]) == n
    # the split depends on the English text only
    assert split_of("Could not open file number 7 for reading") == split_of("Could not open file number 7 for reading")
    assert split_of("hello there world") == split_of("hello there world")
    assert [k for k, v in split_pairs([Pair("hello there world", "x", "a")]).items() if v] == [
        k for k, v in split_pairs([Pair("hello there world", "y", "b")]).items() if v
    ]


def test_tsv_round_trip(tmp_path: Path):
    pairs = [Pair("Größe of %s", "Größe von »%s«", "demo"), Pair("a b c", "ä ö ü ß", "x")]
    write_tsv(pairs, tmp_path / "t.tsv")
    assert read_tsv(tmp_path / "t.tsv") == pairs


def test_committed_test_split_is_consistent():
    test = read_tsv(corpus.TEST_TSV)
    assert 200 <= len(test) <= 1000
    assert all(split_of(p.en) == "test" for p in test)
    assert len({p.en for p in test}) == len(test)


GERMAN = [
    "Die Größe der Datei »%s« überschreitet das Maß.",
    "Äußerst ärgerlich: Öffnen fehlgeschlagen – Straße, Übergröße, Fuß…",
    "konnte Verzeichnis „%s“ nicht öffnen: %m",
]


@pytest.fixture(scope="module")
def tok():
    from build_sd.demo.tokenizer import train_tokenizer

    texts = GERMAN * 3 + ["Could not open the directory %s", "The size of the file exceeds the limit"] * 3
    return train_tokenizer(texts, vocab_size=400)


def test_tokenizer_round_trip(tok):
    from build_sd.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID

    assert (tok.token_to_id("<pad>"), tok.token_to_id("<s>"), tok.token_to_id("</s>")) == (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    for s in GERMAN + ["ß", "ÄÖÜäöüß", "Unbekanntes Zeichen: ẞ 漢字 🙂"]:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=True) == s


def test_prompt_format(tok):
    from build_sd.demo.tokenizer import BOS_ID, EOS_ID, decode, encode_pair, encode_prompt, prompt

    assert prompt("Open the file") == "<s>Open the file => "
    ids, start = encode_pair(tok, "Open the file", "Größe öffnen")
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert ids[:start] == encode_prompt(tok, "Open the file")
    assert decode(tok, ids[start:]) == "Größe öffnen"
    assert tok.decode(ids, skip_special_tokens=True) == "Open the file => Größe öffnen"


def test_committed_tokenizer_round_trip():
    from build_sd.demo import TARGET_DIR
    from build_sd.demo.tokenizer import load_tokenizer

    t = load_tokenizer(TARGET_DIR)
    assert t.get_vocab_size() == 4096
    for s in GERMAN:
        assert t.decode(t.encode(s, add_special_tokens=False).ids) == s


def test_simulated_speculation_counts():
    from build_sd.demo.evaluate import simulate_greedy_speculation

    # iteration 1 judges T T F (2 accepted, 1 rejected, 3 tokens); iteration 2 T T T T (+ bonus)
    r = simulate_greedy_speculation([[True, True, False, True, True, True, True, True]], gamma=4)
    assert (r["accepted"], r["rejected"], r["iterations"], r["tokens"]) == (6, 1, 2, 8)
    assert r["alpha"] == 6 / 7 and r["match_rate"] == 7 / 8
    r = simulate_greedy_speculation([[False, False, False]], gamma=4)
    assert (r["accepted"], r["rejected"], r["iterations"], r["tokens"]) == (0, 3, 3, 3)
