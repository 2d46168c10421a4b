"""What every ISO 20022 message module shares: hardened parsing and validation against
our profile schemas, readable element paths for refusals, building documents, and the
conversions between document amounts and dates and Lockstep's integers.

A document comes from a counterparty, so it is parsed as hostile: no DTD, no entities, no
network, no processing instructions, a byte and a depth limit; then it must be valid under
the message's profile (schemas/*.xsd, each a restriction of the official schema). Compiled
schemas and parsers are not safe to share between threads, and ledgers decode in worker
threads, so each thread compiles its own."""

from __future__ import annotations

import datetime
import functools
import hashlib
import re
import threading
from decimal import Decimal
from pathlib import Path

from lxml import etree

from ..errors import Code, Rejected
from ..identifiers import CURRENCIES

document_bytes_max = 32 * 1024
document_depth_max = 16  # our deepest profile path is 9 elements
schemas_dir = Path(__file__).parent / "schemas"
XINCLUDE = "http://www.w3.org/2001/XInclude"
ISSUER = "LOCKSTEP"  # the issuer of every Lockstep party id in a document
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

_local = threading.local()
_epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def namespace(message: str) -> str:
    return f"urn:iso:std:iso:20022:tech:xsd:{message}"


def _parser() -> etree.XMLParser:
    if not hasattr(_local, "parser"):
        _local.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_pis=False,
            remove_comments=False,
            collect_ids=False,
        )
    return _local.parser


def _schema(message: str) -> etree.XMLSchema:
    schemas = _local.__dict__.setdefault("schemas", {})
    if message not in schemas:
        schemas[message] = etree.XMLSchema(etree.parse(str(schemas_dir / f"{message}.xsd")))
    return schemas[message]


@functools.cache
def codes(message: str, type_name: str) -> frozenset[str]:
    """The values a code type of the message's profile allows, read from the schema itself."""
    schema = etree.parse(str(schemas_dir / f"{message}.xsd"))
    found = schema.xpath(
        f"//xs:simpleType[@name='{type_name}']//xs:enumeration/@value",
        namespaces={"xs": "http://www.w3.org/2001/XMLSchema"},
    )
    assert found, f"{message} has no code type {type_name}"
    return frozenset(found)


def text35(value: str) -> str:
    """A Lockstep id (up to 64 characters) where ISO 20022 allows 35: a longer id keeps
    its first 26 characters and a digest of the whole, so it stays recognisable and distinct."""
    if len(value) <= 35:
        return value
    return f"{value[:26]}~{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def parse(document: str | bytes, message: str) -> etree._Element:
    """The root of a document that is small, plain XML and valid under the message's
    profile; anything else is refused before it is used (entities are never expanded)."""
    data = document.encode("utf-8") if isinstance(document, str) else document
    if len(data) > document_bytes_max:
        raise Rejected(Code.TOO_LARGE, "document", f"{len(data)} bytes, more than the {document_bytes_max} allowed")
    _refuse_declarations(data)
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as error:
        raise Rejected(Code.MALFORMED, "document", f"not well-formed XML: {_readable(error.msg)}") from None
    _refuse_forbidden(tree, message)
    root = tree.getroot()
    schema = _schema(message)
    if not schema.validate(tree):
        first = schema.error_log[0]
        found = tree.xpath(first.path, namespaces={k: v for k, v in root.nsmap.items() if k})
        where = field(found[0]) if found else "document"
        raise Rejected(Code.INVALID_FIELD, where, _readable(first.message))
    return root


def _refuse_declarations(data: bytes) -> None:
    """Refuse a DTD before the parser sees it: even unexpanded, libxml2 reads entity
    declarations and tries to load an external DTD. Markup declarations can only start
    with `<!` outside text, so in UTF-8 (required: no NUL, as UTF-16 and UTF-32 have) a
    byte search finds every one."""
    if b"\x00" in data:
        raise Rejected(Code.MALFORMED, "document", "must be UTF-8")
    for declaration in (b"<!DOCTYPE", b"<!ENTITY", b"<!ELEMENT", b"<!ATTLIST", b"<!NOTATION"):
        if declaration in data:
            raise Rejected(
                Code.MALFORMED,
                "document",
                f"{declaration[1:].decode()} is not allowed: no DTD, no entities; nothing was expanded or loaded",
            )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(Code.MALFORMED, "document", f"must be UTF-8: {error.reason} at byte {error.start}") from None


def _refuse_forbidden(tree: etree._ElementTree, message: str) -> None:
    """PIs, comments, foreign namespaces, XInclude, deep nesting: none has a place in a
    Lockstep document."""
    info = tree.docinfo
    assert not info.doctype and info.internalDTD is None and info.externalDTD is None, "a DTD passed the byte search"
    if (info.encoding or "UTF-8").upper() != "UTF-8":
        raise Rejected(Code.MALFORMED, "document", f"must be UTF-8, not {info.encoding}")
    root = tree.getroot()
    outside = [*root.itersiblings(preceding=True), *root.itersiblings()]
    if outside:
        raise Rejected(Code.MALFORMED, "document", f"a {_kind(outside[0])} outside the root element is not allowed")
    expected = namespace(message)
    if etree.QName(root).namespace != expected:
        raise Rejected(
            Code.INVALID_FIELD,
            field(root),
            f"namespace is {etree.QName(root).namespace or 'none'}, expected {expected}",
        )
    depth = 0
    for event, node in etree.iterwalk(root, events=("start", "end", "comment", "pi")):
        if event in ("comment", "pi"):
            raise Rejected(Code.MALFORMED, field(node.getparent()), f"a {_kind(node)} is not allowed")
        if event == "end":
            depth -= 1
            continue
        depth += 1
        if depth > document_depth_max:
            raise Rejected(Code.MALFORMED, field(node), f"nested deeper than {document_depth_max} elements")
        if etree.QName(node).namespace == XINCLUDE:
            raise Rejected(Code.MALFORMED, field(node), "XInclude is not allowed; nothing was included")
        for name in node.attrib:
            if name.startswith("{"):
                raise Rejected(Code.MALFORMED, field(node), f"attribute {name} is not allowed")


def _kind(node: etree._Element) -> str:
    return "comment" if isinstance(node, etree._Comment) else "processing instruction"


def field(element: etree._Element) -> str:
    """`document:` and the element's path without namespaces, indexed where siblings share its name."""
    steps = []
    while element is not None:
        name = etree.QName(element).localname
        parent = element.getparent()
        same = [] if parent is None else [s for s in parent if s.tag == element.tag]
        steps.append(f"{name}[{same.index(element) + 1}]" if len(same) > 1 else name)
        element = parent
    return "document:/" + "/".join(reversed(steps))


def _readable(message: str) -> str:
    """libxml2's message without namespaces and without the element name the field already gives."""
    message = re.sub(r"\{[^}]*\}", "", message)
    message = re.sub(
        r"^Element '[^']*'(, attribute '([^']*)')?: ", lambda m: f"attribute {m[2]}: " if m[2] else "", message
    )
    return message.strip()


def find(parent: etree._Element, path: str) -> etree._Element:
    """The element at a path the profile makes mandatory."""
    found = parent.find(path, namespaces={None: etree.QName(parent).namespace})
    assert found is not None, f"{field(parent)}/{path} is mandatory in the profile"
    return found


def find_all(parent: etree._Element, path: str) -> list[etree._Element]:
    return parent.findall(path, namespaces={None: etree.QName(parent).namespace})


def text(parent: etree._Element, path: str) -> str:
    return find(parent, path).text or ""


def start(message: str) -> etree._Element:
    return etree.Element(etree.QName(namespace(message), "Document"), nsmap={None: namespace(message)})


def put(parent: etree._Element, path: str, value: str | None = None, **attrib: str) -> etree._Element:
    """Append the element at `path` under `parent`, reusing the intermediate elements
    last appended; written in schema order, this builds a document top to bottom."""
    ns = etree.QName(parent).namespace
    *steps, last = path.split("/")
    for step in steps:
        tag = etree.QName(ns, step).text
        parent = parent[-1] if len(parent) and parent[-1].tag == tag else etree.SubElement(parent, tag)
    element = etree.SubElement(parent, etree.QName(ns, last), attrib)
    element.text = value
    return element


def finish(root: etree._Element, message: str) -> bytes:
    """The document as UTF-8 bytes, asserted valid under its profile: a writer that
    produces an invalid document is a bug."""
    schema = _schema(message)
    assert schema.validate(root), f"{message} writer produced an invalid document: {schema.error_log[0]}"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def minor_units(amount: etree._Element) -> tuple[str, int]:
    """An `Amt Ccy=...` element as (currency, minor units); refused where the currency is
    unknown or the amount has more decimals than the currency."""
    currency = amount.get("Ccy")
    if currency not in CURRENCIES:
        raise Rejected(Code.INVALID_FIELD, field(amount), f"{currency!r} is not an ISO 4217 currency code")
    exponent = CURRENCIES[currency]
    minor = Decimal(amount.text.strip()).scaleb(exponent)
    if minor != minor.to_integral_value():
        raise Rejected(
            Code.INVALID_FIELD,
            field(amount),
            f"{amount.text.strip()} {currency} has more than the {exponent} decimals {currency} has",
        )
    if minor <= 0:
        raise Rejected(Code.INVALID_FIELD, field(amount), "must be positive")
    return currency, int(minor)


def amount_text(minor: int, currency: str) -> str:
    """Minor units printed with the currency's exponent: 12345 EUR is 123.45."""
    assert minor >= 0, f"an ISO 20022 amount is unsigned, got {minor}"
    exponent = CURRENCIES[currency]
    return f"{Decimal(minor).scaleb(-exponent):.{exponent}f}"


def whole_units(quantity: etree._Element) -> int:
    """A quantity of an instrument, refused unless a positive whole number of units."""
    units = Decimal(quantity.text.strip())
    if units != units.to_integral_value():
        raise Rejected(Code.INVALID_FIELD, field(quantity), f"{quantity.text.strip()} is not a whole number of units")
    if units <= 0:
        raise Rejected(Code.INVALID_FIELD, field(quantity), "must be positive")
    return int(units)


def date(element: etree._Element) -> str:
    """A date as YYYY-MM-DD; the schema allows a time zone and long years, Lockstep does not."""
    value = (element.text or "").strip()
    if not DATE_PATTERN.fullmatch(value):
        raise Rejected(Code.INVALID_FIELD, field(element), f"{value!r} must be a date YYYY-MM-DD without a time zone")
    return value


def date_time(time_ms: int) -> str:
    """A UTC time in milliseconds as an ISO 8601 date-time with its zone."""
    moment = _epoch + datetime.timedelta(milliseconds=time_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_date(time_ms: int) -> str:
    return (_epoch + datetime.timedelta(milliseconds=time_ms)).date().isoformat()
