"""The ISO 20022 codec: documents in, Lockstep records out, and back. Pure: no I/O.

`read` turns one counterparty's instruction into a `OneSided`; the writers turn records
into the documents back offices expect (see docs/ISO20022.md for the profile)."""

from __future__ import annotations

from lxml import etree

from ..errors import Code, Rejected
from . import camt053, pacs002, pacs009, sese023, sese024, sese025, xml
from .model import FORMATS, PACS_009, SESE_023, Names, OneSided

READERS = {SESE_023: sese023.read, PACS_009: pacs009.read}
assert set(READERS) == set(FORMATS)

write_sese023 = sese023.write
write_pacs009 = pacs009.write
write_sese024 = sese024.write
write_sese025 = sese025.write
write_pacs002 = pacs002.write
write_camt053 = camt053.write


def read(format: str, document: str | bytes, names: Names | None = None) -> OneSided:
    """One counterparty's instruction, read by the reader for its format, its parties
    named by `names` (see model.Names)."""
    if format not in READERS:
        raise Rejected(Code.UNKNOWN_TYPE, "format", f"{format!r} is not one of {', '.join(FORMATS)}")
    return READERS[format](document, names)


def reasons(document: str) -> tuple[tuple[str, ...], str]:
    """What a status advice written by Lockstep says of why: its codes (`Cd`: the status
    and its reason, such as LACK and MONY; a pacs.002's reason, `Rsn/Prtry`) and its
    first narrative, "" if none."""
    tree = etree.fromstring(document.encode(), xml.hardened_parser())
    codes = tuple(node.text for node in tree.iter() if _is_code(node) and node.text)
    narratives = (node.text for node in tree.iter() if etree.QName(node).localname in _NARRATIVES and node.text)
    return codes, next(narratives, "")


_NARRATIVES = ("AddtlRsnInf", "AddtlInf")


def _is_code(node: etree._Element) -> bool:
    name = etree.QName(node).localname
    parent = node.getparent()
    return name == "Cd" or (name == "Prtry" and parent is not None and etree.QName(parent).localname == "Rsn")
