"""The ISO 20022 codec: what we write reads back unchanged, conforms to our profiles and
to the official structure (python-iso20022's models), and hostile or wrong documents are
refused with the element path and the reason, nothing expanded or loaded."""

import datetime
import time

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from python_iso20022.camt.camt_053_001_12 import Camt05300112
from python_iso20022.pacs.pacs_002_001_14 import Pacs00200114
from python_iso20022.pacs.pacs_009_001_11 import Pacs00900111
from python_iso20022.sese.sese_023_001_11 import Sese02300111
from python_iso20022.sese.sese_024_001_12 import Sese02400112
from python_iso20022.sese.sese_025_001_11 import Sese02500111
from xsdata.formats.dataclass.parsers import XmlParser
from xsdata.formats.dataclass.parsers.config import ParserConfig

from protocols.errors import Code, Rejected
from protocols.identifiers import CURRENCIES, make_isin
from protocols.iso20022 import camt053, pacs002, pacs009, read, sese023, sese024, sese025, xml
from protocols.iso20022.model import (
    NORMAL_PRIORITY,
    PACS_009,
    SESE_023,
    Advice,
    Confirmation,
    OneSided,
    Part,
    Statement,
    StatementEntry,
)

OFFICIAL = XmlParser(config=ParserConfig(fail_on_unknown_properties=True, fail_on_unknown_attributes=True))
NOW_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
ISIN = make_isin("DE000123456")

DVP = OneSided(
    format=SESE_023,
    reference="TX-1",
    kind="dvp",
    side="deliver",
    party="bank-a",
    counterparty="bank-b",
    trade_date="2026-01-02",
    settlement_date="2026-01-05",
    gives_asset=ISIN,
    gives_amount=100,
    gives_account="sec-a",
    takes_asset="EUR",
    takes_amount=123_456,
    takes_account="cash-a",
)
PVP = OneSided(
    format=PACS_009,
    reference="FX-1",
    kind="pvp",
    side="pay",
    party="bank-a",
    counterparty="bank-b",
    trade_date=None,
    settlement_date="2026-01-05",
    gives_asset="EUR",
    gives_amount=100_000,
    gives_account="eur-a",
    takes_asset="JPY",
    takes_amount=16_000,
    takes_account="jpy-a",
)
SESE = "/Document/SctiesSttlmTxInstr"
PACS = "/Document/FICdtTrf"


def _refused(format, document, code, field):
    with pytest.raises(Rejected) as refused:
        read(format, document)
    assert (refused.value.code, refused.value.field) == (code, field), refused.value
    assert refused.value.reason
    return refused.value.reason


def _edit(document: bytes, old: str, new: str) -> bytes:
    assert old.encode() in document, old
    return document.replace(old.encode(), new.encode(), 1)


# generated values ------------------------------------------------------------------------

idents = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,33}", fullmatch=True)
isins = st.from_regex(r"[A-Z]{2}[A-Z0-9]{9}", fullmatch=True).map(make_isin)
currencies = st.sampled_from(sorted(CURRENCIES))
amounts = st.integers(min_value=1, max_value=10**15)
dates = st.dates(min_value=datetime.date(2000, 1, 1), max_value=datetime.date(2099, 12, 31))


@st.composite
def dvps(draw):
    party, counterparty = draw(st.lists(idents, min_size=2, max_size=2, unique=True))
    trade, settle = sorted([draw(dates), draw(dates)])
    security = (draw(isins), draw(amounts), draw(idents))
    payment = draw(st.sampled_from(["APMT", "FREE"]))
    cash = (draw(currencies), draw(amounts), draw(idents)) if payment == "APMT" else (None, 0, None)
    side = draw(st.sampled_from(["deliver", "receive"]))
    gives, takes = (security, cash) if side == "deliver" else (cash, security)
    return OneSided(
        format=SESE_023,
        reference=draw(idents),
        kind="dvp",
        side=side,
        party=party,
        counterparty=counterparty,
        trade_date=trade.isoformat(),
        settlement_date=settle.isoformat(),
        gives_asset=gives[0],
        gives_amount=gives[1],
        gives_account=gives[2],
        takes_asset=takes[0],
        takes_amount=takes[1],
        takes_account=takes[2],
        payment=payment,
        hold=draw(st.booleans()),
        priority=draw(st.integers(min_value=1, max_value=9999)),
        partial=draw(st.booleans()),
    )


@st.composite
def pvps(draw):
    party, counterparty = draw(st.lists(idents, min_size=2, max_size=2, unique=True))
    gives, takes = draw(st.lists(currencies, min_size=2, max_size=2, unique=True))
    return OneSided(
        format=PACS_009,
        reference=draw(idents),
        kind="pvp",
        side="pay",
        party=party,
        counterparty=counterparty,
        trade_date=None,
        settlement_date=draw(dates).isoformat(),
        gives_asset=gives,
        gives_amount=draw(amounts),
        gives_account=draw(idents),
        takes_asset=takes,
        takes_amount=draw(amounts),
        takes_account=draw(idents),
        priority=draw(st.sampled_from([3, 4])),  # InstrPrty HIGH, or none: normal
    )


# round trips and conformance ----------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(dvps())
def test_sese023_round_trip(one):
    document = sese023.write(one)
    assert read(SESE_023, document) == one
    assert read(SESE_023, document.decode()) == one
    parsed = OFFICIAL.from_bytes(document, Sese02300111).scties_sttlm_tx_instr
    assert parsed.tx_id == one.reference
    assert parsed.fin_instrm_id.isin in (one.gives_asset, one.takes_asset)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(pvps(), st.integers(min_value=0, max_value=4_102_444_800_000))
def test_pacs009_round_trip(one, now_ms):
    document = pacs009.write(one, now_ms=now_ms)
    assert read(PACS_009, document) == one
    parsed = OFFICIAL.from_bytes(document, Pacs00900111).ficdt_trf
    assert parsed.grp_hdr.msg_id == one.reference
    assert [t.intr_bk_sttlm_amt.ccy for t in parsed.cdt_trf_tx_inf] == [one.gives_asset, one.takes_asset]


@pytest.mark.parametrize(
    "currency, minor, printed",
    [
        ("JPY", 16_000, "16000"),
        ("EUR", 123_456, "1234.56"),
        ("EUR", 5, "0.05"),
        ("BHD", 1_234, "1.234"),
        ("CLF", 12_345, "1.2345"),
    ],
)
def test_amounts_are_printed_with_the_currencys_exponent(currency, minor, printed):
    assert xml.amount_text(minor, currency) == printed
    document = sese023.write(attrs.evolve(DVP, takes_asset=currency, takes_amount=minor))
    assert f'<Amt Ccy="{currency}">{printed}</Amt>'.encode() in document
    assert read(SESE_023, document).takes_amount == minor


ADVICES = [
    Advice("bank-a", "TX-1", None, "rejected", "DQUA", "quantity is not a whole number", NOW_MS, None),
    Advice("bank-a", "TX-1", None, "rejected", "", "the document could not be read", NOW_MS, None),
    Advice("bank-a", "TX-1", None, "unmatched", "CMIS", "no counter instruction yet", NOW_MS, DVP),
    Advice("bank-a", "TX-1", "S-1", "matched", "", "", NOW_MS, DVP),
    Advice("bank-a", "TX-1", "S-1", "pending", "LACK", "securities not yet locked", NOW_MS, DVP),
    Advice("bank-a", "TX-1", "S-1", "failed", "MONY", "cash leg refunded at expiry", NOW_MS, DVP),
    Advice("bank-a", "TX-1", None, "cancelled", "CANC", "cancelled: unmatched past its settlement date", NOW_MS, DVP),
]


@pytest.mark.parametrize("advice", ADVICES, ids=lambda a: a.status)
def test_sese024_conforms_and_carries_the_status(advice):
    document = sese024.write(advice)
    xml.parse(document, sese024.SESE_024)
    parsed = OFFICIAL.from_bytes(document, Sese02400112).scties_sttlm_tx_sts_advc
    assert parsed.tx_id.acct_ownr_tx_id == "TX-1"
    assert parsed.tx_id.acct_svcr_tx_id == advice.settlement_id
    reasons = {
        "rejected": lambda: parsed.prcg_sts.rjctd.rsn[0],
        "cancelled": lambda: parsed.prcg_sts.canc.rsn[0],
        "unmatched": lambda: parsed.mtchg_sts.umtchd.rsn[0],
        "pending": lambda: parsed.sttlm_sts.pdg.rsn[0],
        "failed": lambda: parsed.sttlm_sts.flng.rsn[0],
    }
    if advice.status in reasons:
        reason = reasons[advice.status]()
        assert advice.reason in reason.addtl_rsn_inf
        code = reason.cd.cd.value
        assert code == advice.reason_code or (code in ("OTHR", "CANS") and advice.reason_code in reason.addtl_rsn_inf)
    else:
        assert parsed.mtchg_sts.mtchd is not None and parsed.sttlm_sts is None
    assert (parsed.tx_dtls is None) == (advice.instruction is None)
    if advice.instruction is not None:
        assert parsed.tx_dtls.fin_instrm_id.isin == ISIN and parsed.tx_dtls.scties_mvmnt_tp.value == "DELI"
        assert parsed.tx_dtls.sttlm_qty.qty.unit == 100 and parsed.tx_dtls.sfkpg_acct.id == "sec-a"


def test_sese024_reason_codes_outside_the_code_list_fall_back_and_lead_the_narrative():
    document = sese024.write(ADVICES[6])
    assert b"<Cd>CANS</Cd>" in document
    assert b"CANC: cancelled: unmatched past its settlement date" in document


def test_sese025_conforms_and_carries_the_settlement():
    confirmation = Confirmation("bank-a", "TX-1", "S-1", DVP, NOW_MS)
    document = sese025.write(confirmation)
    parsed = OFFICIAL.from_bytes(document, Sese02500111).scties_sttlm_tx_conf
    assert parsed.tx_id_dtls.acct_ownr_tx_id == "TX-1" and parsed.tx_id_dtls.acct_svcr_tx_id == "S-1"
    assert parsed.tx_id_dtls.scties_mvmnt_tp.value == "DELI" and parsed.tx_id_dtls.pmt.value == "APMT"
    assert str(parsed.trad_dtls.fctv_sttlm_dt.dt.dt) == "2026-01-01"
    assert parsed.qty_and_acct_dtls.sttld_qty.qty.unit == 100
    assert parsed.qty_and_acct_dtls.sfkpg_acct.id == "sec-a"
    assert str(parsed.sttld_amt.amt.value) == "1234.56" and parsed.sttld_amt.cdt_dbt_ind.value == "CRDT"


def test_sese025_of_a_part_says_what_settled_before_and_what_remains_and_the_parts_add_up():
    """123,456 cents for 100 units, settled as units 0-40 then 40-100: 493.82 then 740.74."""
    first = OFFICIAL.from_bytes(
        sese025.write(Confirmation("bank-a", "TX-1", "S-1", DVP, NOW_MS, Part(0, 40))), Sese02500111
    ).scties_sttlm_tx_conf
    assert first.addtl_params.prtl_sttlm.value == "PAIN"
    quantities = first.qty_and_acct_dtls
    assert (quantities.sttld_qty.qty.unit, quantities.rmng_to_be_sttld_qty.unit) == (40, 60)
    assert quantities.prevsly_sttld_qty is None and quantities.prevsly_sttld_amt is None
    assert (str(first.sttld_amt.amt.value), str(quantities.rmng_to_be_sttld_amt.amt.value)) == ("493.82", "740.74")
    last = OFFICIAL.from_bytes(
        sese025.write(Confirmation("bank-a", "TX-1", "S-1", DVP, NOW_MS, Part(40, 100))), Sese02500111
    ).scties_sttlm_tx_conf
    assert last.addtl_params.prtl_sttlm.value == "PARC"
    quantities = last.qty_and_acct_dtls
    assert (quantities.sttld_qty.qty.unit, quantities.prevsly_sttld_qty.unit) == (60, 40)
    assert quantities.rmng_to_be_sttld_qty is None
    assert (str(last.sttld_amt.amt.value), str(quantities.prevsly_sttld_amt.amt.value)) == ("740.74", "493.82")


@pytest.mark.parametrize(
    "outcome, status",
    [
        (Confirmation("bank-a", "FX-1", "S-2", PVP, NOW_MS), "ACSC"),
        (Advice("bank-a", "FX-1", "S-2", "failed", "MONY", "refunded at expiry", NOW_MS, PVP), "RJCT"),
        (Advice("bank-a", "FX-1", None, "cancelled", "CANC", "x" * 300, NOW_MS, PVP), "RJCT"),
        (Advice("bank-a", "FX-1", None, "rejected", "DDAT", "bad date", NOW_MS, None), "RJCT"),
        (Advice("bank-a", "FX-1", None, "unmatched", "CMIS", "", NOW_MS, PVP), "PDNG"),
        (Advice("bank-a", "FX-1", "S-2", "pending", "", "", NOW_MS, PVP), "PDNG"),
        (Advice("bank-a", "FX-1", "S-2", "matched", "", "", NOW_MS, PVP), "ACSP"),
    ],
)
def test_pacs002_conforms_and_carries_the_outcome(outcome, status):
    document = pacs002.write(outcome, sender="coordinator", now_ms=NOW_MS)
    parsed = OFFICIAL.from_bytes(document, Pacs00200114).fito_fipmt_sts_rpt
    transaction = parsed.tx_inf_and_sts[0]
    assert transaction.tx_sts == status and transaction.orgnl_end_to_end_id == "FX-1"
    assert parsed.orgnl_grp_inf_and_sts[0].orgnl_msg_nm_id == PACS_009
    if isinstance(outcome, Advice) and outcome.reason:
        assert "".join(transaction.sts_rsn_inf[0].addtl_inf) == outcome.reason
    assert pacs002.write(outcome, sender="coordinator", now_ms=NOW_MS) == document


def test_camt053_conforms_and_balances_print_with_sign_and_exponent():
    entries = (
        StatementEntry("i-1", 7, NOW_MS, 2_500, "transfer"),
        StatementEntry("i-2", 9, NOW_MS + 1, -1_000, "settle"),
    )
    statement = Statement("ST-1", "bank-a", "cbdc-eur", "cash-a", "EUR", NOW_MS + 2, 7, 9, -500, 1_000, entries)
    document = camt053.write(statement)
    parsed = OFFICIAL.from_bytes(document, Camt05300112).bk_to_cstmr_stmt
    body = parsed.stmt[0]
    assert body.id == "ST-1" and body.acct.id.othr.id == "cash-a" and body.acct.ccy == "EUR"
    balances = [(b.tp.cd_or_prtry.cd, str(b.amt.value), b.cdt_dbt_ind.value) for b in body.bal]
    assert balances == [("OPBD", "5.00", "DBIT"), ("CLBD", "10.00", "CRDT")]
    assert [(str(n.amt.value), n.cdt_dbt_ind.value, n.acct_svcr_ref, n.bk_tx_cd.prtry.cd) for n in body.ntry] == [
        ("25.00", "CRDT", "i-1", "transfer"),
        ("10.00", "DBIT", "i-2", "settle"),
    ]


def test_long_lockstep_ids_stay_distinct_within_35_characters():
    long_a, long_b = "a" * 40 + "1", "a" * 40 + "2"
    assert len(xml.text35(long_a)) == 35 and xml.text35(long_a) != xml.text35(long_b)
    assert xml.text35("short") == "short"


# refusals: each names the code, the element path and a reason ---------------------------------


def test_missing_mandatory_element_is_refused_naming_its_parent():
    document = _edit(sese023.write(DVP), "<TxId>TX-1</TxId>", "")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/SttlmTpAndAddtlParams")
    assert reason == "not expected here; expected TxId"


def test_wrong_element_order_is_refused_at_the_misplaced_element():
    document = sese023.write(DVP)
    trade = "<TradDt><Dt><Dt>2026-01-02</Dt></Dt></TradDt>"
    settle = "<SttlmDt><Dt><Dt>2026-01-05</Dt></Dt></SttlmDt>"
    document = _edit(document, trade + settle, settle + trade)
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/TradDtls/TradDt")
    assert reason.startswith("not expected here; expected one of LateDlvryDt, DealPric")


def test_bad_date_is_refused_at_the_date():
    document = _edit(sese023.write(DVP), "2026-01-05", "2026-02-30")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/TradDtls/SttlmDt/Dt/Dt")
    assert "'2026-02-30' is not a valid value of the atomic type 'ISODate'" in reason


def test_a_date_with_a_time_zone_or_a_date_time_is_read_as_the_date_written():
    zoned = _edit(sese023.write(DVP), "2026-01-05", "2026-01-05+14:00")
    assert read(SESE_023, zoned) == DVP
    timed = _edit(sese023.write(DVP), "<Dt><Dt>2026-01-02</Dt></Dt>", "<Dt><DtTm>2026-01-02T23:59:59-05:00</DtTm></Dt>")
    assert read(SESE_023, timed) == DVP


def test_a_date_given_as_a_code_is_refused_with_the_iso_reason():
    document = _edit(sese023.write(DVP), "<SttlmDt><Dt><Dt>2026-01-05</Dt></Dt>", "<SttlmDt><DtCd><Cd>WISS</Cd></DtCd>")
    with pytest.raises(xml.Refused) as refused:
        read(SESE_023, document)
    (problem,) = refused.value.problems
    assert (problem.field, problem.code) == (f"document:{SESE}/TradDtls/SttlmDt", "DDAT")
    assert "Lockstep settles on a stated date" in problem.reason


def test_settlement_before_trade_date_is_refused():
    document = _edit(sese023.write(DVP), "2026-01-05", "2026-01-01")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/TradDtls/SttlmDt")
    assert reason == "settlement date 2026-01-01 is before the trade date 2026-01-02"


def test_isin_against_the_pattern_is_refused_by_the_schema():
    document = _edit(sese023.write(DVP), ISIN, "de000123456X")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/FinInstrmId/ISIN")
    assert "pattern" in reason


def test_isin_with_a_wrong_check_digit_is_refused():
    wrong = ISIN[:11] + str((int(ISIN[11]) + 1) % 10)
    document = _edit(sese023.write(DVP), ISIN, wrong)
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/FinInstrmId/ISIN")
    assert reason.startswith("ISIN check digit is")


def test_fractional_units_are_refused():
    document = _edit(sese023.write(DVP), "<Unit>100</Unit>", "<Unit>100.5</Unit>")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/QtyAndAcctDtls/SttlmQty/Qty/Unit")
    assert reason == "100.5 is not a whole number of units"


def test_whole_units_written_with_decimals_are_accepted():
    document = _edit(sese023.write(DVP), "<Unit>100</Unit>", "<Unit>100.000</Unit>")
    assert read(SESE_023, document) == DVP


@pytest.mark.parametrize("currency, printed", [("JPY", "1.5"), ("EUR", "1.005"), ("BHD", "1.0005")])
def test_more_decimals_than_the_currency_has_are_refused(currency, printed):
    document = sese023.write(attrs.evolve(DVP, takes_asset=currency))
    document = _edit(
        document, f'Ccy="{currency}">{xml.amount_text(DVP.takes_amount, currency)}<', f'Ccy="{currency}">{printed}<'
    )
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/SttlmAmt/Amt")
    assert reason == f"{printed} {currency} has more than the {CURRENCIES[currency]} decimals {currency} has"


def test_unknown_currency_is_refused():
    document = _edit(sese023.write(DVP), 'Ccy="EUR"', 'Ccy="XXX"')
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/SttlmAmt/Amt")
    assert "ISO 4217" in reason


def test_free_of_payment_reads_without_cash_and_refuses_a_settlement_amount():
    free = attrs.evolve(DVP, payment="FREE", takes_asset=None, takes_amount=0, takes_account=None)
    document = sese023.write(free)
    assert b"SttlmAmt" not in document and b"CshAcct" not in document
    assert read(SESE_023, document) == free
    with_amount = _edit(sese023.write(DVP), "<Pmt>APMT</Pmt>", "<Pmt>FREE</Pmt>")
    reason = _refused(SESE_023, with_amount, Code.INVALID_FIELD, f"document:{SESE}/SttlmAmt")
    assert reason == "a delivery free of payment (FREE) carries no settlement amount"


@pytest.mark.parametrize("side, wrong", [("deliver", "DBIT"), ("receive", "CRDT")])
def test_wrong_credit_debit_indicator_is_refused(side, wrong):
    one = (
        DVP
        if side == "deliver"
        else attrs.evolve(
            DVP,
            side="receive",
            gives_asset="EUR",
            gives_amount=123_456,
            gives_account="cash-a",
            takes_asset=ISIN,
            takes_amount=100,
            takes_account="sec-a",
        )
    )
    right = "CRDT" if wrong == "DBIT" else "DBIT"
    document = _edit(sese023.write(one), f"<CdtDbtInd>{right}<", f"<CdtDbtInd>{wrong}<")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/SttlmAmt/CdtDbtInd")
    assert f"{right}, not {wrong}" in reason


def test_an_issuer_other_than_lockstep_is_refused():
    document = _edit(sese023.write(DVP), "<Issr>LOCKSTEP</Issr>", "<Issr>OTHER</Issr>")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, f"document:{SESE}/DlvrgSttlmPties/Pty1")
    assert reason == "names no party by a Lockstep id (issuer LOCKSTEP), BIC or LEI"


def test_pacs009_with_the_same_currency_twice_is_refused():
    document = _edit(pacs009.write(PVP, now_ms=NOW_MS), 'Ccy="JPY">16000', 'Ccy="EUR">160.00')
    reason = _refused(PACS_009, document, Code.INVALID_FIELD, f"document:{PACS}/CdtTrfTxInf[2]/IntrBkSttlmAmt")
    assert reason == "a PvP exchanges two currencies, both are EUR"


def test_pacs009_with_a_different_end_to_end_id_is_refused():
    document = pacs009.write(PVP, now_ms=NOW_MS)
    head, tail = document.split(b"<EndToEndId>FX-1</EndToEndId>", 1)
    document = head + b"<EndToEndId>FX-1</EndToEndId>" + tail.replace(b"<EndToEndId>FX-1<", b"<EndToEndId>FX-2<", 1)
    reason = _refused(PACS_009, document, Code.INVALID_FIELD, f"document:{PACS}/CdtTrfTxInf[2]/PmtId/EndToEndId")
    assert "'FX-2', expected 'FX-1'" in reason


def test_pacs009_with_three_transactions_is_refused():
    document = pacs009.write(PVP, now_ms=NOW_MS)
    start = document.index(b"<CdtTrfTxInf>")
    end = document.index(b"</CdtTrfTxInf>") + len(b"</CdtTrfTxInf>")
    document = document[:end] + document[start:end] + document[end:]
    reason = _refused(PACS_009, document, Code.INVALID_FIELD, f"document:{PACS}/GrpHdr/NbOfTxs")
    assert reason == "NbOfTxs is 2, the document holds 3: a PvP side holds 1 or 2"


def test_pacs009_naming_the_counterpartys_account_is_refused():
    document = _edit(
        pacs009.write(PVP, now_ms=NOW_MS),
        "</Dbtr><Cdtr>",
        "</Dbtr><DbtrAcct><Id><Othr><Id>theirs</Id></Othr></Id></DbtrAcct><Cdtr>",
    )
    assert document.count(b"<DbtrAcct>") == 2
    _refused(PACS_009, document, Code.INVALID_FIELD, f"document:{PACS}/CdtTrfTxInf[2]/DbtrAcct")


def test_unknown_format_is_refused():
    with pytest.raises(Rejected) as refused:
        read("sese.023.001.09", sese023.write(DVP))
    assert (refused.value.code, refused.value.field) == (Code.UNKNOWN_TYPE, "format")


def test_not_well_formed_is_refused():
    reason = _refused(SESE_023, b"<Document><SctiesSttlmTxInstr></Document>", Code.MALFORMED, "document")
    assert "not well-formed" in reason


def test_wrong_namespace_is_refused():
    document = sese023.write(DVP).replace(b"sese.023.001.11", b"sese.023.001.09")
    reason = _refused(SESE_023, document, Code.INVALID_FIELD, "document:/Document")
    assert "expected urn:iso:std:iso:20022:tech:xsd:sese.023.001.11" in reason


def test_a_prefixed_namespace_is_read_like_the_default_one():
    document = etree.tostring(etree.fromstring(sese023.write(DVP)), xml_declaration=True, encoding="UTF-8")
    root = etree.fromstring(document)
    prefixed = etree.Element(etree.QName(xml.namespace(SESE_023), "Document"), nsmap={"s": xml.namespace(SESE_023)})
    prefixed.extend(root)
    assert read(SESE_023, etree.tostring(prefixed)) == DVP
    broken = etree.tostring(prefixed).replace(b"<s:TxId>TX-1</s:TxId>", b"")
    _refused(SESE_023, broken, Code.INVALID_FIELD, f"document:{SESE}/SttlmTpAndAddtlParams")


# hostile documents: refused before anything is expanded or loaded -----------------------------

BODY = sese023.write(DVP).split(b"?>", 1)[1]
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b"]>"
    + BODY.replace(b"<TxId>TX-1</TxId>", b"<TxId>&lol9;</TxId>")
)
QUADRATIC = (
    b'<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY a "'
    + b"a" * 20_000
    + b'">]>'
    + BODY.replace(b"<TxId>TX-1</TxId>", b"<TxId>" + b"&a;" * 500 + b"</TxId>")
)
XXE = b'<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + BODY.replace(
    b"<TxId>TX-1</TxId>", b"<TxId>&x;</TxId>"
)
EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE Document SYSTEM "http://127.0.0.1:9/evil.dtd">' + BODY
PARAMETER = b'<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>' + BODY
XINCLUDE = BODY.replace(
    b"<TxId>TX-1</TxId>",
    b'<TxId>TX-1</TxId><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/>',
)


@pytest.mark.parametrize(
    "document",
    [LAUGHS, QUADRATIC, XXE, EXTERNAL_DTD, PARAMETER],
    ids=["billion-laughs", "quadratic", "xxe", "external-dtd", "parameter-entity"],
)
def test_dtds_and_entities_are_refused_unexpanded(document):
    started = time.process_time()  # its own CPU: a busy machine does not make it slow
    with pytest.raises(Rejected) as refused:
        read(SESE_023, document)
    assert time.process_time() - started < 0.5
    assert refused.value == Rejected(
        Code.MALFORMED, "document", "!DOCTYPE is not allowed: no DTD, no entities; nothing was expanded or loaded"
    )


def test_an_entity_declaration_is_refused_even_without_a_doctype():
    document = b"<!ENTITY a 'b'>" + BODY
    assert _refused(SESE_023, document, Code.MALFORMED, "document").startswith("!ENTITY is not allowed")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_documents_not_in_utf8_are_refused(encoding):
    document = sese023.write(DVP).decode().replace("UTF-8", encoding.upper()).encode(encoding)
    assert _refused(SESE_023, document, Code.MALFORMED, "document") == "must be UTF-8"


def test_a_declared_encoding_other_than_utf8_is_refused():
    document = sese023.write(DVP).replace(b"encoding='UTF-8'", b"encoding='ISO-8859-1'")
    assert _refused(SESE_023, document, Code.MALFORMED, "document") == "must be UTF-8, not ISO-8859-1"


def test_undefined_entities_are_not_well_formed():
    document = _edit(sese023.write(DVP), "<TxId>TX-1<", "<TxId>&x;<")
    assert "not well-formed" in _refused(SESE_023, document, Code.MALFORMED, "document")


def test_xinclude_is_refused_and_nothing_is_included():
    with pytest.raises(Rejected) as refused:
        read(SESE_023, XINCLUDE)
    assert refused.value == Rejected(
        Code.MALFORMED, f"document:{SESE}/include", "XInclude is not allowed; nothing was included"
    )


def test_processing_instructions_are_refused_and_comments_read_past():
    pi = _edit(sese023.write(DVP), "<TxId>", "<?evil stuff?><TxId>")
    assert _refused(SESE_023, pi, Code.MALFORMED, f"document:{SESE}") == "a processing instruction is not allowed"
    comment = _edit(sese023.write(DVP), "<TxId>TX-1</TxId>", "<TxId>TX<!-- hidden -->-1</TxId>")
    assert read(SESE_023, comment) == DVP  # the text around a comment is one value, as the schema saw it
    before_root = _edit(sese023.write(DVP), "<Document", "<!-- from the back office --><Document")
    assert read(SESE_023, before_root) == DVP


def test_schema_instance_attributes_are_refused():
    document = _edit(
        sese023.write(DVP),
        "<TxId>",
        '<TxId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Max35Text">',
    )
    _refused(SESE_023, document, Code.MALFORMED, f"document:{SESE}/TxId")


def test_documents_over_the_byte_limit_are_refused():
    document = sese023.write(DVP)
    padded = _edit(document, "<TxId>", " " * (xml.document_bytes_max - len(document) + 1) + "<TxId>")
    assert len(padded) == xml.document_bytes_max + 1
    reason = _refused(SESE_023, padded, Code.TOO_LARGE, "document")
    assert str(xml.document_bytes_max) in reason
    exactly = _edit(document, "<TxId>", " " * (xml.document_bytes_max - len(document)) + "<TxId>")
    assert read(SESE_023, exactly) == DVP


def test_deep_nesting_is_refused():
    depth = xml.document_depth_max
    document = _edit(sese023.write(DVP), "<TxId>TX-1</TxId>", "<TxId>" + "<a>" * depth + "</a>" * depth + "</TxId>")
    with pytest.raises(Rejected) as refused:
        read(SESE_023, document)
    assert refused.value.code is Code.MALFORMED
    assert refused.value.reason == f"nested deeper than {depth} elements"


def test_very_deep_nesting_within_the_byte_limit_is_refused_quickly():
    document = b'<Document xmlns="%s">%s%s</Document>' % (
        xml.namespace(SESE_023).encode(),
        b"<a>" * 4000,
        b"</a>" * 4000,
    )
    assert len(document) < xml.document_bytes_max
    started = time.process_time()  # its own CPU: a busy machine does not make it slow
    with pytest.raises(Rejected) as refused:
        read(SESE_023, document)
    assert time.process_time() - started < 0.5
    assert refused.value.code is Code.MALFORMED and "depth" in refused.value.reason


def test_parsing_is_safe_from_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    documents = [sese023.write(attrs.evolve(DVP, reference=f"TX-{i}")) for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        read_back = list(pool.map(lambda d: read(SESE_023, d), documents))
    assert [one.reference for one in read_back] == [f"TX-{i}" for i in range(200)]


_SPLICES = [b"<", b">", b"&amp;", b"&#0;", b"\xff", b"<X/>", b' a="1"', b"]]>", b"<!--", b"\n", b"0", b"9" * 30, b"-"]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([SESE_023, PACS_009]),
    st.lists(
        st.tuples(
            st.floats(0, 1), st.integers(0, 10**6), st.integers(0, 255), st.integers(1, 20), st.sampled_from(_SPLICES)
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_a_mutated_document_is_read_or_refused_never_anything_else(fmt, edits):
    """Bytes flipped, cut or spliced anywhere in a valid document: `read` returns a record
    or raises `Rejected`; no other exception reaches the desk or a ledger."""
    document = bytearray(sese023.write(DVP) if fmt == SESE_023 else pacs009.write(PVP, now_ms=NOW_MS))
    for kind, position, byte, length, splice in edits:
        at = position % len(document)
        if kind < 0.4:
            document[at] = byte
        elif kind < 0.7:
            del document[at : at + length]
        else:
            document[at:at] = splice
    try:
        assert isinstance(read(fmt, bytes(document)), OneSided)
    except Rejected as error:
        assert error.field and error.reason


def test_a_hold_and_a_priority_are_read_and_a_priority_of_zero_is_refused_naming_it():
    one = attrs.evolve(DVP, hold=True, priority=2)
    document = sese023.write(one)
    assert read(SESE_023, document) == one
    plain = read(SESE_023, sese023.write(DVP))
    assert plain.priority == NORMAL_PRIORITY and not plain.hold
    with pytest.raises(xml.Refused) as refused:
        read(SESE_023, document.replace(b"<Nmrc>0002</Nmrc>", b"<Nmrc>0000</Nmrc>"))
    (problem,) = refused.value.problems
    assert problem.field.endswith("SttlmParams/Prty") and "0001" in problem.reason, problem
