"""Documents as back offices write them (tests/backoffice.py): valid under the official
schemas, with the optional blocks of real traffic, envelopes, BICs and LEIs. Each is read
for what Lockstep uses and the rest ignored; what Lockstep cannot settle is refused with
every problem at once, each at its element with its ISO reason code."""

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import Code
from protocols.identifiers import bic11
from protocols.iso20022 import pacs002, pacs009, read, sese024, xml
from protocols.iso20022.model import PACS_009, SESE_023, Advice, Confirmation, Denomination, OneSided
from protocols.iso20022.sese023 import FACE_FIELD, in_units
from protocols.matching import differences
from tests.backoffice import SESE023_OPTIONAL, Who, pacs009_legs, sese023, sese023_documents, validate_official
from tests.test_iso20022 import NOW_MS, PVP

BANK_A = {"bic": "BANKDEFFXXX", "lei": "529900T8BM49AURSDO55", "id": "bank-a"}
BANK_B = {"bic": "BANKGB2L", "lei": "5493001KJTIIGC8Y1R12", "id": "bank-b"}
DIRECTORY = {
    f"{scheme}/{bic11(p['bic']) if scheme == 'BIC' else p['lei']}": p["id"]
    for p in (BANK_A, BANK_B)
    for scheme in ("BIC", "LEI")
}
ISIN = "DE0001102580"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "iso20022-xsd"


def ways_to_name(party: dict) -> st.SearchStrategy[Who]:
    """Every way a sese.023 may name a registered party: BIC, LEI (with a name), Lockstep id, and pairs."""
    return st.sampled_from(
        [
            Who(bic=party["bic"]),
            Who(lei=party["lei"], name="Bank"),
            Who(proprietary=party["id"]),
            Who(bic=party["bic"], lei=party["lei"]),
            Who(proprietary=party["id"], lei=party["lei"]),
        ]
    )


def names(name: str) -> str | None:
    return DIRECTORY.get(name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sese023_documents(
        payment="APMT",
        units=st.integers(1, 10**6),
        face_amount=None,
        isin=ISIN,
        safekeeping="sec-a",
        cash_account="cash-a",
        amount=("EUR", "1234.56"),
        deliverer=ways_to_name(BANK_A),
        receiver=ways_to_name(BANK_B),
    )
)
def test_a_delivery_against_payment_as_a_back_office_writes_it_is_read(drawn):
    arguments, document = drawn
    assert validate_official(document) == []
    one = read(SESE_023, document, names)
    delivers = arguments["movement"] == "DELI"
    security, cash = (ISIN, arguments["units"], "sec-a"), ("EUR", 123_456, "cash-a")
    gives, takes = (security, cash) if delivers else (cash, security)
    assert (one.party, one.counterparty) == (("bank-a", "bank-b") if delivers else ("bank-b", "bank-a"))
    assert (one.gives_asset, one.gives_amount, one.gives_account) == gives
    assert (one.takes_asset, one.takes_amount, one.takes_account) == takes
    assert (one.reference, one.trade_date, one.settlement_date) == (
        arguments["reference"],
        arguments["trade_date"],
        arguments["settlement_date"],
    )
    assert one.common_id == arguments["common_id"]
    assert one.linked == arguments["linked"]
    place = arguments["place_of_settlement"] and bic11(arguments["place_of_settlement"])
    assert one.depositories == (place, place)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sese023_documents(
        payment="FREE",
        amount=None,
        units=st.integers(1, 10**6),
        face_amount=None,
        isin=ISIN,
        safekeeping="sec-a",
        deliverer=ways_to_name(BANK_A),
        receiver=ways_to_name(BANK_B),
    )
)
def test_a_delivery_free_of_payment_as_a_back_office_writes_it_is_read(drawn):
    arguments, document = drawn
    one = read(SESE_023, document, names)
    security = (ISIN, arguments["units"], "sec-a")
    mine, theirs = (
        (one.gives_asset, one.gives_amount, one.gives_account),
        (one.takes_asset, one.takes_amount, one.takes_account),
    )
    assert one.payment == "FREE"
    assert (mine, theirs) == (
        (security, (None, 0, None)) if arguments["movement"] == "DELI" else ((None, 0, None), security)
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sese023_documents(
        units=None,
        face_amount=st.integers(1, 10**5).map(lambda n: f"{n * 1000}.00"),
        isin=ISIN,
        cash_account="cash-a",
        deliverer=ways_to_name(BANK_A),
        receiver=ways_to_name(BANK_B),
    )
)
def test_a_bond_instructed_by_face_amount_is_counted_in_units_of_its_denomination(drawn):
    arguments, document = drawn
    one = read(SESE_023, document, names)
    assert one.face_amount == Decimal(arguments["face_amount"])
    thousands = in_units(one, Denomination("EUR", 100_000))  # EUR 1,000.00 a unit
    assert (thousands.gives_amount if one.side == "deliver" else thousands.takes_amount) == int(one.face_amount) // 1000
    if int(one.face_amount) % 3000:
        with pytest.raises(xml.Refused) as refused:
            in_units(one, Denomination("EUR", 300_000))
        assert [(p.field, p.code) for p in refused.value.problems] == [(FACE_FIELD, "DQUA")]


def ways_to_name_an_institution(party: dict) -> st.SearchStrategy[Who]:
    """Every way a pacs.009 may name a registered institution: BICFI, LEI, Lockstep id, together."""
    return st.sampled_from(
        [
            Who(bic=party["bic"]),
            Who(lei=party["lei"], name="Bank"),
            Who(proprietary=party["id"]),
            Who(bic=party["bic"], lei=party["lei"], proprietary=party["id"]),
        ]
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pacs009_legs(
        currency="USD",
        amount="540.00",
        debtor=ways_to_name_an_institution(BANK_A),
        debtor_account="a-usd",
        creditor=ways_to_name_an_institution(BANK_B),
        creditor_account="b-usd",
    )
)
def test_a_pvp_leg_as_a_cbpr_plus_sender_writes_it_is_read(drawn):
    arguments, document = drawn
    assert validate_official(document) == []
    one = read(PACS_009, document, names)
    assert (one.side, one.party, one.counterparty) == ("leg", "bank-a", "bank-b")
    assert (one.reference, one.common_id, one.settlement_date) == (
        arguments["msg_id"],
        arguments["end_to_end_id"],
        arguments["settlement_date"],
    )
    assert (one.gives_asset, one.gives_amount, one.gives_account, one.pays_into) == ("USD", 54_000, "a-usd", "b-usd")
    assert (one.takes_asset, one.takes_amount, one.takes_account) == (None, 0, None)
    assert one.uetr == arguments["uetr"]
    report = pacs002.write(
        Confirmation("bank-a", one.reference, "m-1", one, NOW_MS), sender="coordinator", now_ms=NOW_MS
    )
    assert validate_official(report) == []
    assert f"<OrgnlUETR>{one.uetr}</OrgnlUETR>".encode() in report  # CBPR+: the status names the payment's UETR


def test_every_optional_block_at_once_in_an_envelope_is_read():
    document = sese023(
        reference="REF-ALL",
        movement="DELI",
        payment="APMT",
        trade_date="2026-12-04",
        settlement_date="2026-12-07",
        trade_date_time=True,
        isin=ISIN,
        units=250,
        safekeeping="sec-a",
        cash_account="cash-a",
        amount=("EUR", "250000.00"),
        deliverer=Who(bic=BANK_A["bic"], lei=BANK_A["lei"]),
        receiver=Who(lei=BANK_B["lei"], name="Bank B"),
        common_id="TRADE-77",
        linked=("REF-0",),
        place_of_settlement="DAKVDEFFXXX",
        optional=SESE023_OPTIONAL,
        envelope="Envelope",
        schema_location=True,
        comment_before_root=True,
    )
    assert validate_official(document) == []
    one = read(SESE_023, document, names)
    assert (one.party, one.counterparty, one.gives_amount, one.takes_amount) == ("bank-a", "bank-b", 250, 25_000_000)
    assert (one.common_id, one.linked, one.depositories) == ("TRADE-77", ("REF-0",), ("DAKVDEFFXXX",) * 2)


def _side(**changes) -> bytes:
    arguments = {
        "reference": "REF-1",
        "movement": "DELI",
        "payment": "APMT",
        "trade_date": "2026-12-04",
        "settlement_date": "2026-12-07",
        "isin": ISIN,
        "units": 100,
        "safekeeping": "sec-a",
        "cash_account": "cash-a",
        "amount": ("EUR", "1000.00"),
        "deliverer": Who(bic=BANK_A["bic"]),
        "receiver": Who(bic=BANK_B["bic"]),
    }
    return sese023(**{**arguments, **changes})


def test_every_problem_is_listed_at_once_each_with_its_element_and_iso_reason():
    document = _side(
        isin=ISIN[:11] + str((int(ISIN[11]) + 1) % 10),
        receiver=Who(bic="NOBODYXXXXX"[:8]),
        safekeeping="sec a",  # not a Lockstep account id
        units=None,
        face_amount="0",
    )
    with pytest.raises(xml.Refused) as refused:
        read(SESE_023, document, names)
    found = {(p.field.removeprefix("document:/Document/SctiesSttlmTxInstr/"), p.code) for p in refused.value.problems}
    assert found == {
        ("FinInstrmId/ISIN", "DSEC"),
        ("QtyAndAcctDtls/SttlmQty/Qty/FaceAmt", "DQUA"),
        ("QtyAndAcctDtls/SfkpgAcct/Id", "SAFE"),
        ("RcvgSttlmPties/Pty1", "DEPT"),
    }
    assert refused.value.code is Code.INVALID_FIELD and refused.value.field == "document"
    assert refused.value.reason.startswith("4 problems: (1) ")


def test_schema_violations_are_listed_together_with_the_codes_allowed():
    document = _side().replace(b">DELI<", b">DELX<").replace(b"<Unit>100</Unit>", b"<Unit>lots</Unit>")
    with pytest.raises(xml.Refused) as refused:
        read(SESE_023, document, names)
    reasons = {p.field.rsplit("/", 1)[-1]: p.reason for p in refused.value.problems}
    assert reasons["SctiesMvmntTp"] == "'DELX' is not one of the allowed codes: DELI, RECE"
    assert "'lots' is not a valid value" in reasons["Unit"]


def test_a_party_named_two_ways_must_be_one_party():
    document = _side(deliverer=Who(bic=BANK_A["bic"], lei=BANK_B["lei"]))
    with pytest.raises(xml.Refused) as refused:
        read(SESE_023, document, names)
    (problem,) = refused.value.problems
    assert problem.code == "DEPT" and "names different parties" in problem.reason


def test_an_application_header_for_another_message_is_refused():
    document = _side(envelope="Envelope").replace(b"<MsgDefIdr>sese.023.001.11<", b"<MsgDefIdr>sese.023.001.09<")
    with pytest.raises(xml.Refused) as refused:
        read(SESE_023, document, names)
    assert refused.value.field.endswith("/AppHdr/MsgDefIdr")


@pytest.mark.parametrize("envelope", ["Envelope", "RequestPayload"])
def test_an_envelope_must_hold_an_application_header_then_the_document(envelope):
    document = _side(envelope=envelope)
    assert read(SESE_023, document, names).party == "bank-a"
    start, end = document.index(b"<AppHdr"), document.index(b"</AppHdr>") + len(b"</AppHdr>")
    with pytest.raises(xml.Rejected) as refused:
        read(SESE_023, document[:start] + document[end:], names)
    assert "an envelope of an AppHdr then a Document" in refused.value.reason


def test_common_reference_and_place_of_settlement_must_agree_where_both_give_them():
    deliverer = read(
        SESE_023, _side(common_id="C-1", place_of_settlement="DAKVDEFFXXX", optional=frozenset({"Dpstry"})), names
    )
    receiver = read(SESE_023, _side(reference="REF-2", movement="RECE", amount=("EUR", "1000.00")), names)
    assert differences(deliverer, receiver) == []  # the receiver gives neither: nothing to disagree on
    other = read(
        SESE_023,
        _side(movement="RECE", common_id="C-2", place_of_settlement="CEDELULLXXX", optional=frozenset({"Dpstry"})),
        names,
    )
    assert {d.code for d in differences(deliverer, other)} == {"DCMX", "PLCE"}


def test_a_pvp_pair_with_cbpr_plus_elements_is_read():
    document = pacs009.write(PVP, now_ms=NOW_MS)
    document = document.replace(b"<SttlmMtd>CLRG</SttlmMtd>", b"<SttlmMtd>INDA</SttlmMtd>")
    for uetr in ("eb6305c9-1f7f-49de-aed0-16487c27b42d", "7a562c67-ca16-48ba-b074-65581be6f001"):
        head, _, tail = document.partition(b"</EndToEndId></PmtId>")
        document = head + b"</EndToEndId><UETR>" + uetr.encode() + b"</UETR></PmtId >" + tail
    document = document.replace(b"</PmtId >", b"</PmtId>").replace(
        b"<Dbtr>", b"<InstgAgt><FinInstnId><BICFI>BANKDEFFXXX</BICFI></FinInstnId></InstgAgt><Dbtr>"
    )
    document = b"<!-- CBPR+ -->" + document.split(b"?>", 1)[1]
    assert validate_official(document) == []
    assert read(PACS_009, document) == PVP


def test_every_document_lockstep_writes_is_valid_under_the_official_schemas():
    """The writers assert it too; this checks with the builders' own copy of the schemas,
    and that the copies shipped are the standard's (../shared, where this checkout has it)."""
    assert validate_official(pacs009.write(PVP, now_ms=NOW_MS)) == []
    shipped = sorted(xml.official_dir.glob("*.xsd"))
    assert {path.name for path in shipped} >= {
        "sese.023.001.11.xsd",
        "sese.024.001.12.xsd",
        "sese.025.001.11.xsd",
        "pacs.009.001.11.xsd",
        "pacs.002.001.14.xsd",
        "camt.053.001.12.xsd",
        "head.001.001.02.xsd",
    }
    for path in shipped:
        if (SHARED / path.name).exists():
            assert (SHARED / path.name).read_bytes() == path.read_bytes(), path.name


def test_one_sided_fields_default_so_documents_without_them_read_the_same():
    one = read(SESE_023, _side(), names)
    assert isinstance(one, OneSided) and (one.common_id, one.depositories, one.linked) == (None, (None, None), ())


def test_linked_instructions_are_reported_back_in_the_status_advice():
    one = read(SESE_023, _side(linked=("REF-0", "REF-9"), optional=frozenset({"Lnkgs"})), names)
    assert one.linked == ("REF-0", "REF-9")
    advice = sese024.write(Advice("bank-a", one.reference, None, "unmatched", "CMIS", "", NOW_MS, one))
    assert validate_official(advice) == []
    assert b"<Lnkgs><SctiesSttlmTxId>REF-0</SctiesSttlmTxId></Lnkgs>" in advice  # the message holds one
