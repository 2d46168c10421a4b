"""The back-office builders write only what the official ISO 20022 schemas allow: every
document drawn, and every optional block at once, is valid under them, each optional block
really appears, fixed values are kept (so two sides can match), and the validator can fail."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from protocols.identifiers import isin_problem
from tests.backoffice import (
    ENVELOPES,
    PACS009_OPTIONAL,
    SESE023_OPTIONAL,
    Who,
    bics,
    isins,
    lei,
    leis,
    pacs009_leg,
    pacs009_legs,
    parties,
    sese023,
    sese023_documents,
    validate_official,
)

drawn = settings(max_examples=50, deadline=None)

BUYER = Who(bic="NORDDEFFXXX", lei=lei("529900T8BM49AURSDO"))
SELLER = Who(proprietary="PTY00042", lei=lei("5493001KJTIIGC8Y1R"))
NAMED = Who(lei=lei("7LTWFZYICNSX8D621K"), name="Harbour Trust plc")
SESE = {
    "reference": "INSTR-20261204-001",
    "movement": "DELI",
    "payment": "APMT",
    "trade_date": "2026-12-04",
    "settlement_date": "2026-12-08",
    "isin": "DE0001102580",
    "units": 2500,
    "safekeeping": "10020030",
    "cash_account": "DE89370400440532013000",
    "amount": ("EUR", "250125.00"),
    "deliverer": SELLER,
    "receiver": BUYER,
}
PACS = {
    "msg_id": "PVP-20261204-7",
    "end_to_end_id": "E2E-20261204-7",
    "uetr": "eb6305c9-1f7f-49de-aed0-16487c27b42d",
    "created": "2026-12-04T09:30:00+01:00",
    "settlement_date": "2026-12-04",
    "currency": "USD",
    "amount": "1000000.00",
    "debtor": BUYER,
    "debtor_account": "400500600",
    "creditor": SELLER,
    "creditor_account": "700800900",
}


def text(document: bytes, path: str) -> str:
    return etree.fromstring(document).findtext(path)


@drawn
@given(sese023_documents())
def test_every_drawn_sese023_is_valid_under_the_official_schemas(case):
    _, document = case
    assert validate_official(document) == []


@drawn
@given(pacs009_legs())
def test_every_drawn_pacs009_is_valid_under_the_official_schemas(case):
    _, document = case
    assert validate_official(document) == []


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize("quantity", [{"units": 2500}, {"units": None, "face_amount": "5000000"}])
@pytest.mark.parametrize("receiver", [BUYER, SELLER, NAMED])
def test_sese023_with_every_optional_block_is_valid(envelope, quantity, receiver):
    document = sese023(
        **{**SESE, **quantity, "receiver": receiver},
        common_id="TRADE-88231",
        linked=("INSTR-20261204-002", "INSTR-20261204-003"),
        place_of_settlement="DAKVDEFFXXX",
        optional=SESE023_OPTIONAL,
        envelope=envelope,
        schema_location=True,
        comment_before_root=True,
    )
    assert validate_official(document) == []


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize("method", ["INDA", "INGA", "CLRG", "COVE"])
def test_pacs009_with_every_optional_block_is_valid(envelope, method):
    document = pacs009_leg(
        **PACS,
        settlement_method=method,
        optional=PACS009_OPTIONAL,
        envelope=envelope,
        schema_location=True,
        comment_before_root=True,
        prefix="ns2",
    )
    assert validate_official(document) == []


@pytest.mark.parametrize("name", sorted(SESE023_OPTIONAL))
def test_each_sese023_optional_block_appears(name):
    assert sese023(**SESE, optional=frozenset({name})) != sese023(**SESE)


@pytest.mark.parametrize("name", sorted(PACS009_OPTIONAL))
def test_each_pacs009_optional_block_appears(name):
    assert pacs009_leg(**PACS, optional=frozenset({name})) != pacs009_leg(**PACS)


def test_core_values_land_on_their_documented_paths():
    document = sese023(**SESE, envelope="Envelope")
    instruction = "{*}Document/{*}SctiesSttlmTxInstr/"
    assert text(document, instruction + "{*}TxId") == "INSTR-20261204-001"
    assert text(document, instruction + "{*}QtyAndAcctDtls/{*}SttlmQty/{*}Qty/{*}Unit") == "2500"
    assert text(document, instruction + "{*}QtyAndAcctDtls/{*}CshAcct/{*}Prtry") == "DE89370400440532013000"
    assert text(document, instruction + "{*}SttlmAmt/{*}CdtDbtInd") == "CRDT"
    assert text(document, instruction + "{*}DlvrgSttlmPties/{*}Pty1/{*}Id/{*}PrtryId/{*}Issr") == "LOCKSTEP"
    assert text(document, instruction + "{*}RcvgSttlmPties/{*}Pty1/{*}LEI") == BUYER.lei
    assert text(document, "{*}AppHdr/{*}MsgDefIdr") == "sese.023.001.11"
    leg = pacs009_leg(**PACS)
    transfer = "{*}Document/{*}FICdtTrf/"
    assert text(leg, transfer + "{*}CdtTrfTxInf/{*}Cdtr/{*}FinInstnId/{*}Othr/{*}Id") == "PTY00042"
    assert text(leg, transfer + "{*}CdtTrfTxInf/{*}DbtrAcct/{*}Id/{*}Othr/{*}Id") == "400500600"
    assert text(leg, "{*}AppHdr/{*}BizSvc") == "swift.cbprplus.02"


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_fixed_core_values_make_two_matching_sides(data):
    core = {
        key: SESE[key] for key in ("isin", "units", "trade_date", "settlement_date", "amount", "deliverer", "receiver")
    }
    delivering, deliver_document = data.draw(sese023_documents(movement="DELI", **core))
    receiving, receive_document = data.draw(sese023_documents(movement="RECE", **core))
    assert {key: delivering[key] for key in core} == core == {key: receiving[key] for key in core}
    assert validate_official(deliver_document) == validate_official(receive_document) == []


def test_a_missing_mandatory_element_is_reported_with_its_line():
    document = etree.fromstring(sese023(**SESE))
    settlement_date = document.find(".//{*}SttlmDt")
    settlement_date.getparent().remove(settlement_date)
    problems = validate_official(etree.tostring(document))
    assert problems and all(problem.startswith("line ") for problem in problems)
    assert "SttlmDt" in problems[0]


def test_an_element_out_of_sequence_is_reported():
    document = etree.fromstring(sese023(**SESE))
    party = document.find(".//{*}DlvrgSttlmPties/{*}Pty1")
    party.insert(0, party.find("{*}LEI"))
    assert validate_official(etree.tostring(document)) != []


def test_a_broken_app_header_is_reported():
    document = etree.fromstring(pacs009_leg(**PACS, envelope="Envelope"))
    definition = document.find("{*}AppHdr/{*}MsgDefIdr")
    definition.getparent().remove(definition)
    problems = validate_official(etree.tostring(document))
    assert (
        len(problems) == 1
        and "Expected is ( {urn:iso:std:iso:20022:tech:xsd:head.001.001.02}MsgDefIdr )" in problems[0]
    )


def test_an_unknown_message_or_malformed_bytes_are_reported():
    unknown = sese023(**SESE).replace(b"sese.023.001.11", b"sese.023.001.99")
    assert "no official schema" in validate_official(unknown)[0]
    assert validate_official(b"<Document")[0].startswith("line 1:")


def test_lei_check_digits_are_those_of_real_leis():
    assert lei("529900T8BM49AURSDO") == "529900T8BM49AURSDO55"
    assert lei("5493001KJTIIGC8Y1R") == "5493001KJTIIGC8Y1R12"


@drawn
@given(leis(), isins(), bics(), parties())
def test_drawn_identifiers_are_valid(drawn_lei, isin, bic, party):
    assert int("".join(str(int(char, 36)) for char in drawn_lei)) % 97 == 1
    assert isin_problem(isin) is None
    assert len(bic) in (8, 11) and bic[4:6].isalpha()
    assert party.bic or party.lei or party.proprietary
