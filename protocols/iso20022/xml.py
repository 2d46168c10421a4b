"""What every ISO 20022 message module shares: hardened parsing and validation against
the official schemas, readable element paths for refusals, building documents, and the
conversions between document amounts and dates and Lockstep's integers.

A document comes from a counterparty, so it is parsed as hostile: no DTD, no entities, no
network, no processing instructions, a byte and a depth limit; then it must be valid under
the official schema of its message (schemas/official/), and so may carry anything the
standard allows. What Lockstep writes is checked against both the official schema and our
profile (schemas/*.xsd, a restriction of it: the elements we promise to write). Compiled
schemas and parsers are not safe to share between threads, and ledgers decode in worker
threads, so each thread compiles its own."""

from __future__ import annotations

import datetime
import functools
import hashlib
import re
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from lxml import etree

from ..errors import Code, Rejected
from ..identifiers import CURRENCIES
from .model import Problem

document_bytes_max = 32 * 1024
document_depth_max = 32  # the official schemas nest about 12 deep; supplementary data, more
problems_max = 20  # violations listed in one refusal
schemas_dir = Path(__file__).parent / "schemas"
official_dir = schemas_dir / "official"
HEADER = "head.001.001.02"  # the business application header SWIFT and T2S carry
XINCLUDE = "http://www.w3.org/2001/XInclude"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATIONS = {f"{{{XSI}}}schemaLocation", f"{{{XSI}}}noNamespaceSchemaLocation"}  # kept, never loaded
ISSUER = "LOCKSTEP"  # the issuer of every Lockstep party id in a document
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

_local = threading.local()
_epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class Refused(Rejected):
    """A document refused for every problem found in it, not only the first."""

    def __init__(self, code: Code, problems: list[Problem]) -> None:
        assert problems
        if len(problems) == 1:
            super().__init__(code, problems[0].field, problems[0].reason)
        else:
            listed = "; ".join(f"({n}) {p.field}: {p.reason}" for n, p in enumerate(problems, 1))
            super().__init__(code, "document", f"{len(problems)} problems: {listed}")
        self.problems = tuple(problems)


def namespace(message: str) -> str:
    return f"urn:iso:std:iso:20022:tech:xsd:{message}"


def hardened_parser() -> etree.XMLParser:
    """lxml's parser that neither expands an entity nor loads anything (one per thread)."""
    if not hasattr(_local, "parser"):
        _local.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_pis=False,
            remove_comments=True,  # comments are read past, and text around one is joined
            collect_ids=False,
        )
    return _local.parser


def _schema(message: str, *, profile: bool = False) -> etree.XMLSchema:
    """The official schema of a message, or Lockstep's profile of it."""
    path = (schemas_dir if profile else official_dir) / f"{message}.xsd"
    schemas = _local.__dict__.setdefault("schemas", {})
    if path not in schemas:
        schemas[path] = etree.XMLSchema(etree.parse(str(path)))
    return schemas[path]


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
    """The message's `Document` element, from a document that is small, plain XML and
    valid under the official schema, alone or in a business application header
    envelope; anything else is refused, every problem found at once, before it is used
    (entities are never expanded, nothing is loaded)."""
    data = document.encode("utf-8") if isinstance(document, str) else document
    if len(data) > document_bytes_max:
        raise Rejected(Code.TOO_LARGE, "document", f"{len(data)} bytes, more than the {document_bytes_max} allowed")
    _refuse_declarations(data)
    try:
        tree = etree.fromstring(data, hardened_parser()).getroottree()
    except etree.XMLSyntaxError as error:
        raise Rejected(Code.MALFORMED, "document", f"not well-formed XML: {_readable(error.msg)}") from None
    _refuse_forbidden(tree)
    body, header = _unwrap(tree.getroot(), message)
    problems = _invalid(body, _schema(message))
    if header is not None:
        problems += _invalid(header, _schema(HEADER)) or _header_problems(header, message)
    if problems:
        raise Refused(Code.INVALID_FIELD, problems[:problems_max])
    return body


def _unwrap(root: etree._Element, message: str) -> tuple[etree._Element, etree._Element | None]:
    """The Document and its application header (None without an envelope). An envelope
    is any element holding exactly an AppHdr (head.001) and then the Document, as SWIFT
    and T2S carry them; its own name and namespace are the network's, not the standard's."""
    expected = namespace(message)
    if etree.QName(root).localname == "Document":
        body, header = root, None
    else:
        children = [child for child in root if isinstance(child.tag, str)]
        names = [etree.QName(child).localname for child in children]
        if names != ["AppHdr", "Document"]:
            raise Rejected(
                Code.INVALID_FIELD,
                field(root),
                "the root is a Document, or an envelope of an AppHdr then a Document, "
                f"not {', '.join(names) or 'nothing'}",
            )
        header, body = children
        if etree.QName(header).namespace != namespace(HEADER):
            raise Rejected(
                Code.INVALID_FIELD,
                field(header),
                f"namespace is {etree.QName(header).namespace or 'none'}, expected {namespace(HEADER)}",
            )
    if etree.QName(body).namespace != expected:
        raise Rejected(
            Code.INVALID_FIELD,
            field(body),
            f"namespace is {etree.QName(body).namespace or 'none'}, expected {expected}",
        )
    return body, header


def _invalid(element: etree._Element, schema: etree.XMLSchema) -> list[Problem]:
    """Every violation libxml2 reports (it skips the rest of an element's content after
    a misplaced child), up to `problems_max`, each at its element."""
    if schema.validate(element):
        return []
    problems = []
    prefixes = {prefix: uri for prefix, uri in element.nsmap.items() if prefix}
    for error in list(schema.error_log)[:problems_max]:
        path = error.path or ""
        found = element.getroottree().xpath(path, namespaces=prefixes) if path.startswith("/") else []
        where = field(found[0]) if found and isinstance(found[0], etree._Element) else f"document (line {error.line})"
        problems.append(Problem(where, _readable(error.message)))
    return problems


def _header_problems(header: etree._Element, message: str) -> list[Problem]:
    """The header must announce this message; the rest of it is the network's business."""
    definition = find(header, "MsgDefIdr")
    if (definition.text or "").strip() != message:
        return [Problem(field(definition), f"{definition.text!r} names another message than the Document, {message}")]
    return []


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


def _refuse_forbidden(tree: etree._ElementTree) -> None:
    """Processing instructions, XInclude, schema-instance attributes other than a schema
    location (never loaded), deep nesting: none has a place in an instruction. Comments
    are read past."""
    info = tree.docinfo
    assert not info.doctype and info.internalDTD is None and info.externalDTD is None, "a DTD passed the byte search"
    if (info.encoding or "UTF-8").upper() != "UTF-8":
        raise Rejected(Code.MALFORMED, "document", f"must be UTF-8, not {info.encoding}")
    root = tree.getroot()
    for sibling in (*root.itersiblings(preceding=True), *root.itersiblings()):
        if not isinstance(sibling, etree._Comment):
            raise Rejected(Code.MALFORMED, "document", "a processing instruction is not allowed")
    depth = 0
    for event, node in etree.iterwalk(root, events=("start", "end", "pi")):
        if event == "pi":
            raise Rejected(Code.MALFORMED, field(node.getparent()), "a processing instruction is not allowed")
        if event == "end":
            depth -= 1
            continue
        depth += 1
        if depth > document_depth_max:
            raise Rejected(Code.MALFORMED, field(node), f"nested deeper than {document_depth_max} elements")
        if etree.QName(node).namespace == XINCLUDE:
            raise Rejected(Code.MALFORMED, field(node), "XInclude is not allowed; nothing was included")
        for name in node.attrib:
            if name.startswith("{") and name not in SCHEMA_LOCATIONS:
                raise Rejected(Code.MALFORMED, field(node), f"attribute {_readable(name)} is not allowed")


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
    """libxml2's message in a reader's words: without namespaces, without the element
    name the field already gives, with the allowed codes and elements kept."""
    message = re.sub(r"\{[^{}']*\}", "", message)
    message = re.sub(
        r"^Element '[^']*'(, attribute '([^']*)')?: ", lambda m: f"attribute {m[2]}: " if m[2] else "", message
    )
    message = re.sub(
        r"\[facet 'enumeration'\] The value '([^']*)' is not an element of the set \{([^}]*)\}\.",
        lambda m: f"{m[1]!r} is not one of the allowed codes: {m[2].replace(chr(39), '')}",
        message,
    )
    message = re.sub(
        r"This element is not expected\. Expected is (one of )?\( ?([^)]*?) ?\)\.",
        r"not expected here; expected \1\2",
        message,
    )
    message = re.sub(
        r"Missing child element\(s\)\. Expected is (one of )?\( ?([^)]*?) ?\)\.", r"missing: expected \1\2", message
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
    """The document as UTF-8 bytes, asserted valid under the official schema and our
    profile: a writer that produces an invalid document is a bug."""
    for schema in (_schema(message), _schema(message, profile=True)):
        assert schema.validate(root), f"{message} writer produced an invalid document: {schema.error_log[0]}"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


class Findings:
    """A reader's problems, gathered so that one refusal lists them all."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def refuse(self, where: etree._Element | str, reason: str, code: str = "OTHR") -> None:
        self.problems.append(Problem(where if isinstance(where, str) else field(where), reason, code))

    def done(self) -> None:
        if self.problems:
            raise Refused(Code.INVALID_FIELD, self.problems[:problems_max])


def party(
    block: etree._Element, written: list[str], names: Callable[[str], str | None] | None, findings: Findings
) -> str | None:
    """The one party a block's identifiers name (Lockstep ids as they are, `BIC/...` and
    `LEI/...` through `names`); None, with the problem noted, where they name no
    registered party or several. Without `names`, the first identifier as written.
    Names and addresses, and ids issued by others, identify no one here."""
    if not written:
        findings.refuse(block, f"names no party by a Lockstep id (issuer {ISSUER}), BIC or LEI", "DEPT")
        return None
    if names is None:
        return written[0]
    parties = {name: name if "/" not in name else names(name) for name in written}
    unknown = [name for name, party in parties.items() if party is None]
    if unknown:
        findings.refuse(block, f"{', '.join(unknown)}: not a registered party's", "DEPT")
        return None
    if len(set(parties.values())) > 1:
        findings.refuse(
            block, "names different parties: " + ", ".join(f"{n} is {p}" for n, p in parties.items()), "DEPT"
        )
        return None
    return next(iter(parties.values()))


def minor_units(amount: etree._Element, findings: Findings, code: str = "DMON") -> tuple[str, int] | None:
    """An amount element with its `Ccy` as (currency, minor units); None, with the
    problem noted, where the currency is unknown or the amount has more decimals than the
    currency has."""
    currency = amount.get("Ccy")
    if currency not in CURRENCIES:
        findings.refuse(amount, f"{currency!r} is not an ISO 4217 currency code with minor units", code)
        return None
    exponent = CURRENCIES[currency]
    minor = Decimal(amount.text.strip()).scaleb(exponent)
    if minor != minor.to_integral_value():
        findings.refuse(
            amount, f"{amount.text.strip()} {currency} has more than the {exponent} decimals {currency} has", code
        )
        return None
    if minor <= 0:
        findings.refuse(amount, "must be positive", code)
        return None
    return currency, int(minor)


def amount_text(minor: int, currency: str) -> str:
    """Minor units printed with the currency's exponent: 12345 EUR is 123.45."""
    assert minor >= 0, f"an ISO 20022 amount is unsigned, got {minor}"
    exponent = CURRENCIES[currency]
    return f"{Decimal(minor).scaleb(-exponent):.{exponent}f}"


def whole(quantity: etree._Element, findings: Findings, what: str) -> int | None:
    """A positive whole number (of units, of a face amount's minor units); None, with
    the problem noted, otherwise."""
    value = Decimal(quantity.text.strip())
    if value != value.to_integral_value():
        findings.refuse(quantity, f"{quantity.text.strip()} is not a whole number of {what}", "DQUA")
        return None
    if value <= 0:
        findings.refuse(quantity, "must be positive", "DQUA")
        return None
    return int(value)


def date(choice: etree._Element, findings: Findings, code: str) -> str | None:
    """The date of a date choice (`Dt/Dt` or `Dt/DtTm`) as YYYY-MM-DD: a date-time's own
    date, as written, whatever its zone. None, with the problem noted, for a date given
    as a code or with a year past 9999."""
    found = choice.find("{*}Dt/{*}Dt")
    if found is None:
        found = choice.find("{*}Dt/{*}DtTm")
    value = found.text.strip() if found is not None and found.text else ""
    if not DATE_PATTERN.fullmatch(value[:10]) or value[10:11] not in ("", "T", "Z", "+", "-"):
        findings.refuse(choice, "a date (Dt/Dt or Dt/DtTm) is needed: Lockstep settles on a stated date", code)
        return None
    return value[:10]


def date_time(time_ms: int) -> str:
    """A UTC time in milliseconds as an ISO 8601 date-time with its zone."""
    moment = _epoch + datetime.timedelta(milliseconds=time_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_date(time_ms: int) -> str:
    return (_epoch + datetime.timedelta(milliseconds=time_ms)).date().isoformat()
