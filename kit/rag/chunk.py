"""Documents to chunks: text, Markdown, HTML and PDF are read into blocks (headings and
paragraphs), and blocks are packed into chunks of at most ``size`` characters that never cross
a heading and never split a paragraph unless it alone is too long. Each chunk carries its
heading path, which is also written at the top of its text (context for the embedding)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from kit.errors import KitError

SUFFIXES = {".txt": "text", ".text": "text", ".rst": "text", ".md": "markdown", ".markdown": "markdown",
            ".html": "html", ".htm": "html", ".pdf": "pdf"}
DEFAULT_SIZE = 800
DEFAULT_OVERLAP = 100


@dataclass(frozen=True)
class Block:
    kind: str  # "heading" or "text"
    text: str
    level: int = 0


@dataclass(frozen=True)
class Chunk:
    position: int
    text: str
    heading: str


def kind_of(path: Path) -> str | None:
    return SUFFIXES.get(path.suffix.lower())


def _paragraphs(text: str) -> list[Block]:
    return [Block("text", " ".join(p.split())) for p in re.split(r"\n\s*\n", text) if p.strip()]


def markdown_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    para: list[str] = []
    fence = None

    def flush():
        if para:
            blocks.extend(_paragraphs("\n".join(para)) if fence is None else [Block("text", "\n".join(para).strip())])
            para.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if fence is not None:  # a code block stays one block, its lines as they are
            para.append(line)
            if stripped.startswith(fence):
                blocks.append(Block("text", "\n".join(para).strip()))
                para.clear()
                fence = None
            continue
        if stripped.startswith(("```", "~~~")):
            flush()
            fence = stripped[:3]
            para.append(line)
            continue
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", stripped)
        if heading:
            flush()
            blocks.append(Block("heading", heading.group(2), len(heading.group(1))))
        elif not stripped:
            flush()
        else:
            para.append(line)
    if fence is not None:
        blocks.append(Block("text", "\n".join(para).strip()))
        para.clear()
        fence = None
    flush()
    return blocks


class _HTMLBlocks(HTMLParser):
    BLOCK = {"p", "div", "li", "pre", "blockquote", "td", "th", "tr", "section", "article", "br", "dd", "dt",
             "table", "ul", "ol", "main", "header", "footer", "figcaption"}
    SKIP = {"script", "style", "noscript", "template", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.text: list[str] = []
        self.heading: int = 0
        self.skip = 0

    def flush(self):
        text = " ".join("".join(self.text).split())
        self.text = []
        if text:
            self.blocks.append(Block("heading", text, self.heading) if self.heading else Block("text", text))

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading = int(tag[1])
        elif tag in self.BLOCK:
            self.flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading = 0
        elif tag in self.BLOCK:
            self.flush()

    def handle_data(self, data):
        if not self.skip:
            self.text.append(data)


def html_blocks(text: str) -> list[Block]:
    parser = _HTMLBlocks()
    parser.feed(text)
    parser.close()
    parser.flush()
    return parser.blocks


def pdf_blocks(path: Path) -> list[Block]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # a broken file is reported once, as a failure
    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise KitError(f"not a readable PDF ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    blocks = []
    for page in pages:  # PDF text rarely keeps blank lines: then each line ending a sentence ends a paragraph
        text = page if re.search(r"\n\s*\n", page) else re.sub(r"([.!?:])\n", r"\1\n\n", page)
        blocks.extend(_paragraphs(text))
    return blocks


def read_blocks(path: Path) -> list[Block]:
    """The blocks of one file; a KitError (reason only) when it cannot be read or decoded."""
    kind = kind_of(path)
    if kind == "pdf":
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise KitError(e.strerror or str(e)) from None
        return pdf_blocks(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KitError(e.strerror or str(e)) from None
    except UnicodeDecodeError as e:
        raise KitError(f"not UTF-8 text (byte {e.start})") from None
    if kind == "markdown":
        return markdown_blocks(text)
    if kind == "html":
        return html_blocks(text)
    return _paragraphs(text)


def _split_long(text: str, size: int) -> list[str]:
    """A paragraph longer than ``size``: split at sentence ends, else at spaces, else hard."""
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        while len(sentence) > size:
            cut = sentence.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > size:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return [p for p in pieces if p]


def _tail(text: str, overlap: int) -> str:
    if overlap <= 0 or len(text) <= overlap:
        return "" if overlap <= 0 else text
    cut = text.find(" ", len(text) - overlap)
    return text[cut + 1:] if cut >= 0 else text[-overlap:]


def chunk_blocks(blocks: list[Block], size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    if size < 50:
        raise KitError(f"--chunk-size {size}: at least 50 characters")
    if not 0 <= overlap < size // 2:
        raise KitError(f"--overlap {overlap}: from 0 to less than half of --chunk-size ({size})")
    chunks: list[Chunk] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    carried = False  # body starts with the previous chunk's tail only

    def emit():
        nonlocal body, carried
        if body and not carried:
            heading = " > ".join(t for _, t in path)
            text = "\n\n".join(body)
            chunks.append(Chunk(len(chunks), f"{heading}\n\n{text}" if heading else text, heading))
        body, carried = [], False

    for block in blocks:
        if block.kind == "heading":
            emit()
            path = [(lvl, t) for lvl, t in path if lvl < block.level] + [(block.level, block.text)]
            continue
        for piece in _split_long(block.text, size) if len(block.text) > size else [block.text]:
            if body and len("\n\n".join(body)) + 2 + len(piece) > size:
                tail = _tail("\n\n".join(body), overlap)
                emit()
                if tail:
                    body, carried = [tail], True
            body.append(piece)
            carried = False
    emit()
    return chunks


def chunk_file(path: Path, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    return chunk_blocks(read_blocks(path), size, overlap)
