"""The `lockstep` command: every service and tool of a local world.

    lockstep demo [--broker URL] [--keep] [--console HOST:PORT]
                                         a whole local world settling, with a report
    lockstep ledger --config FILE [--metrics HOST:PORT]
                                         run one ledger service over MQTT
    lockstep coordinator --config FILE [--metrics HOST:PORT]
                                         run the coordinator over MQTT
    lockstep watchtower --config FILE    run a watchtower over MQTT, as any party
    lockstep status ID --config FILE     a settlement's phase and steps, from the coordinator
    lockstep broker [--port N]           run a Mosquitto with Lockstep's settings
    lockstep bench [--quick]             cross-ledger against same-ledger settlement, one run
    lockstep chaos --seconds N --seed S [--bus memory|mqtt] [--faults LIST] [--settlements N] [--backstop-ms MS]
                   [--coordinators N] [--queue]
                                         the workload under faults, then the audit
    lockstep conformance --broker URL --ledger ID --keys DIR
                                         check any ledger service against PROTOCOL.md
    lockstep audit --registry FILE (--db FILE ... | --broker URL --ledger ID ...)
                                         verify every journal, check every settlement across ledgers
    lockstep observer --config FILE      follow every ledger's journal live; ALERT on any violation
    lockstep console --config FILE --users FILE [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE]
                     [--party ID --key FILE]
                                         the read-only web console for operators and the supervisor
    lockstep rotate-key --broker URL --registry FILE --ledger ID --operator ID --operator-key FILE
                        --party ID --public-key FILE
                                         a ledger's operator registers a participant's new key there
    lockstep corporate-action --broker URL --registry FILE --id ID (--query | --issuer ID --issuer-key FILE --isin ISIN
                        --kind coupon|redemption --date YYYY-MM-DD ...)
                                         an issuer's coupon or redemption mandate to its paying agent
    lockstep submit FILE --broker URL --registry FILE --party ID --key FILE [--wait S] [--out DIR]
                                         send a sese.023 or pacs.009 instruction to the matching desk
    lockstep hold ID --broker URL --registry FILE --party ID --key FILE [--release] [--id ID]
                                         hold a party's own instruction at the matching desk, or release it
    lockstep advices --broker URL --registry FILE --party ID --key FILE [--from SEQ] [--out DIR]
                                         a party's status advices and confirmations (ISO 20022)
    lockstep statement --broker URL --registry FILE --ledger ID --account A --currency CCY [--out FILE]
                                         a camt.053 statement of a cash account, from its journal
    lockstep end-of-day --broker URL --registry FILE --party ID --key FILE --out DIR [--date D] [--cash L:A:CCY ...]
                                         a participant's end-of-day report: camt.053s, its open instructions

An expected failure (a file, key or config that cannot serve, the broker unreachable or
refusing, a service that does not answer) ends the command with one line on stderr naming
the cause and the file or address, exit status 2 (protocols/failures.py); a traceback only
with --log-level debug. A bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import trio

from protocols.databases import LOCAL_POSTGRES
from protocols.failures import ExpectedFailure

BROKER_URL_HELP = (
    "broker URL, such as mqtt://127.0.0.1:1883, or a cluster's node URLs joined by commas "
    "(docs/DEPLOY.md: credentials, TLS, clusters)"
)
BROKER_OVERRIDE_HELP = "broker URL (a cluster's: its nodes' URLs joined by commas), overriding the config's"


def _ledger(args: argparse.Namespace) -> int:
    from ledgers import daemon

    trio.run(daemon.run, args.config, args.broker, args.metrics)
    return 0


def _broker(args: argparse.Namespace) -> int:
    """Mosquitto as a child that gets our signals; a folder we made is removed when it ends."""
    from engine.world.broker import Broker

    directory = args.dir or tempfile.mkdtemp(prefix="lockstep-broker-")
    try:
        broker = Broker(
            directory,
            port=args.port,
            host=args.host,
            password_file=args.password_file,
            acl_file=args.acl_file,
            certfile=args.certfile,
            keyfile=args.keyfile,
        )
        return broker.serve(lambda: print(f"mosquitto on {broker.url} (config {broker.config_path})", flush=True))
    finally:
        if args.dir is None:
            shutil.rmtree(directory)


def _engine(args: argparse.Namespace) -> int:
    from engine import daemon

    if args.command == "coordinator":
        trio.run(daemon.run_coordinator, args.config, args.broker, args.metrics, tuple(args.standby))
    else:
        trio.run(daemon.run_watchtower, args.config, args.broker, args.party, args.key)
    return 0


def _intermediary(args: argparse.Namespace) -> int:
    from engine import daemon

    trio.run(daemon.run_intermediary, args.config, args.broker)
    return 0


def _pay(args: argparse.Namespace) -> int:
    from engine.client import pay

    return trio.run(
        pay.main,
        args.broker,
        args.registry,
        args.coordinator,
        args.party,
        args.key,
        args.id,
        args.source,
        args.source_max,
        args.payee,
        args.target,
        args.amount,
        args.deadline_s,
    )


def _status(args: argparse.Namespace) -> int:
    from engine.client import status

    return trio.run(status.main, args.config, args.id, args.broker)


def _terminate_as_interrupt() -> None:
    """SIGTERM taken as Ctrl-C, which trio raises where the run can unwind: a command
    that starts processes (the demo's, the bench's, chaos's) stops them on either."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def _demo(args: argparse.Namespace) -> int:
    from engine.world import demo
    from protocols.bus.exposition import parse_address

    _terminate_as_interrupt()
    console = None
    if args.console is not None:
        try:
            console = parse_address(args.console)
        except ValueError as error:
            raise ExpectedFailure(f"--console {args.console}", str(error)) from None
    return demo.main(args.broker, keep=args.keep, console=console)


def _bench(args: argparse.Namespace) -> int:
    from benchmarks import bench

    logging.getLogger().setLevel(logging.WARNING)
    _terminate_as_interrupt()
    return bench.main(args)


def _chaos(args: argparse.Namespace) -> int:
    """In this process on the memory bus, or with every service a process on Mosquitto."""
    from engine.world import chaos, chaos_processes

    logging.getLogger().setLevel(logging.ERROR)
    _terminate_as_interrupt()
    mode = chaos_processes if args.bus == "mqtt" else chaos
    if args.coordinators < 1 or (args.coordinators > 1 and args.bus != "mqtt"):
        print("lockstep chaos: --coordinators: 1 or more, and more than 1 only with --bus mqtt", file=sys.stderr)
        return 2
    if (args.queue or args.paths) and args.bus != "memory":
        print("lockstep chaos: --queue and --paths run on the memory bus", file=sys.stderr)
        return 2
    if args.queue and args.paths:
        print("lockstep chaos: --queue or --paths, not both", file=sys.stderr)
        return 2
    mqtt_only = args.broker_cluster or args.strikes is not None or args.broker_kind != "mosquitto" or args.qos != 1
    if (mqtt_only or args.store != "sqlite") and args.bus != "mqtt":
        print(
            "lockstep chaos: --broker-cluster, --broker-kind, --store, --qos and --strikes need --bus mqtt",
            file=sys.stderr,
        )
        return 2
    defaults = chaos_processes.CLUSTER_FAULTS if args.broker_cluster else mode.FAULTS
    listed = ",".join(defaults) if args.faults is None else args.faults
    faults = tuple(fault for fault in listed.split(",") if fault)
    return mode.main(
        args.seconds,
        args.seed,
        faults,
        long_outages=args.long_outages,
        settlements=args.settlements,
        backstop_ms=args.backstop_ms,
        **({"coordinators": args.coordinators} if args.coordinators != 1 else {}),
        **({"queue": True} if args.queue else {}),
        **({"paths": True} if args.paths else {}),
        **(
            {
                "broker_cluster": args.broker_cluster,
                "strikes": args.strikes,
                "broker_kind": args.broker_kind,
                "store": args.store,
                "postgres": args.postgres,
                "qos": args.qos,
            }
            if args.bus == "mqtt"
            else {}
        ),
    )


def _conformance(args: argparse.Namespace) -> int:
    from engine.audit.conformance import main

    return trio.run(main, args.broker, args.ledger, args.keys)


def _rotate_key(args: argparse.Namespace) -> int:
    from engine.client import rotate_key

    return trio.run(
        rotate_key.main,
        args.broker,
        args.registry,
        args.ledger,
        args.operator,
        args.operator_key,
        args.party,
        args.public_key,
    )


MANDATE = ("--issuer-key", "--isin", "--kind", "--date", "--securities-account", "--cash-account")


def _corporate_action(args: argparse.Namespace) -> int:
    from engine.client import corporate_action

    given = [option for option in MANDATE if getattr(args, option[2:].replace("-", "_")) is not None]
    if args.issuer is not None and len(given) < len(MANDATE):
        args.usage_error(f"--issuer needs {', '.join(option for option in MANDATE if option not in given)}")
    if args.query and given:
        args.usage_error(f"--query asks how the action stands and sends no mandate: drop {', '.join(given)}")
    return trio.run(corporate_action.main, args)


def _submit(args: argparse.Namespace) -> int:
    from engine.client import submit

    if args.command == "submit":
        return trio.run(
            submit.main,
            args.file,
            args.broker,
            args.registry,
            args.coordinator,
            args.party,
            args.key,
            args.id,
            args.wait,
            args.out,
        )
    if args.command == "hold":
        return trio.run(
            submit.hold,
            args.broker,
            args.registry,
            args.coordinator,
            args.party,
            args.key,
            args.instruction,
            args.release,
            args.id,
        )
    if args.command == "offset":
        return trio.run(submit.offset, args.broker, args.registry, args.coordinator, args.party, args.key)
    return trio.run(
        submit.fetch,
        args.broker,
        args.registry,
        args.coordinator,
        args.party,
        args.key,
        getattr(args, "from"),
        args.out,
    )


def _statement(args: argparse.Namespace) -> int:
    from engine.client import statement

    return trio.run(
        statement.main,
        args.broker,
        args.registry,
        args.ledger,
        args.account,
        args.currency,
        args.from_seq,
        args.to_seq,
        args.out,
    )


def _end_of_day(args: argparse.Namespace) -> int:
    from engine.client import end_of_day

    date = args.date or datetime.datetime.now(datetime.UTC).date().isoformat()
    return trio.run(
        end_of_day.main, args.broker, args.registry, args.coordinator, args.party, args.key, date, args.cash, args.out
    )


def _back_office(parser: argparse.ArgumentParser, party: str) -> None:
    """What a back office's command needs to reach the matching desk as its party."""
    parser.add_argument("--broker", required=True, metavar="URL", help=BROKER_URL_HELP)
    parser.add_argument("--registry", required=True, metavar="FILE", help="the consortium's registry.toml")
    parser.add_argument(
        "--coordinator", default="coordinator", metavar="ID", help="the coordinator's id (default: coordinator)"
    )
    parser.add_argument("--party", required=True, metavar="ID", help=party)
    parser.add_argument("--key", required=True, metavar="FILE", help="the party's private key (PEM, mode 600)")


def _cash_account(text: str) -> tuple[str, str, str]:
    """An argparse type: LEDGER:ACCOUNT:CCY."""
    from engine.client.end_of_day import cash_account

    try:
        return cash_account(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _audit(args: argparse.Namespace) -> int:
    from engine.audit.journals import main

    return main(args.registry, args.db, args.broker, args.ledger, args.grace_ms)


def _provenance(args: argparse.Namespace) -> int:
    from engine.audit.provenance import main

    return main(args.registry, args.db, args.broker, args.ledger, args.account, args.asset, args.issuance)


def _observer(args: argparse.Namespace) -> int:
    from engine.audit import observer

    trio.run(observer.serve, args.config, args.broker, args.grace_ms)
    return 0


def _console(args: argparse.Namespace) -> int:
    from engine.console import service

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ExpectedFailure("--tls-cert and --tls-key", "give both, or neither")
    tls = service.Tls(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    if (args.party is None) != (args.key is None):
        raise ExpectedFailure("--party and --key", "give both, or neither")
    supervisor = (args.party, args.key) if args.party else None
    trio.run(service.serve, args.config, args.listen, args.users, args.broker, args.grace_ms, tls, supervisor)
    return 0


def _date(text: str) -> str:
    """An argparse type: a calendar date written YYYY-MM-DD."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            datetime.date.fromisoformat(text)
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date written YYYY-MM-DD")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="lockstep", description="Multi-ledger atomic settlement: every service and tool of a Lockstep world."
    )
    root.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="what services log to stderr, one line per event; debug also shows the traceback "
        "of an expected failure (default: info)",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, description: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=description, **kwargs)

    ledger = command(
        "ledger",
        "run one ledger service over MQTT",
        "Run one ledger (securities, cbdc or unified) as a service on an MQTT broker, until SIGTERM or SIGINT.",
    )
    ledger.add_argument("--config", required=True, metavar="FILE", help="the ledger's TOML file")
    ledger.add_argument("--broker", metavar="URL", help=BROKER_OVERRIDE_HELP)
    ledger.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there, overriding the config's"
    )
    ledger.set_defaults(run=_ledger)

    demo = command(
        "demo",
        "run a whole local world and report what happened",
        "Start a whole local world, settle DvPs and PvPs across and within ledgers, fail, roll back, "
        "recover, and report every step and balance.",
    )
    demo.add_argument(
        "--broker",
        metavar="URL",
        help="run each ledger as its own process on this MQTT broker (default: all in this process, "
        "on the in-memory bus)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the world's folder (keys, configs, databases, log) and say where it is "
        "(default: removed at the end)",
    )
    demo.add_argument(
        "--console",
        metavar="HOST:PORT",
        help="serve the web console over the demo's world there (a supervisor's password is drawn and "
        "printed), and go on serving once the scenarios are over, until Ctrl-C (default: no console)",
    )
    demo.set_defaults(run=_demo)

    for name, text, description in (
        (
            "coordinator",
            "run the coordinator over MQTT",
            "Run the coordinator, with its watchtower and desks, on an MQTT broker until SIGTERM or SIGINT; "
            "it resumes every unfinished settlement from its journal.",
        ),
        (
            "watchtower",
            "run a watchtower over MQTT",
            "Run a watchtower on its own, as any registered party: it forwards the coordinator's decisions "
            "(claims or cancels) to every ledger of a settlement it has not reached.",
        ),
    ):
        engine = command(name, text, description)
        engine.add_argument("--config", required=True, metavar="FILE", help="the coordinator's TOML file")
        engine.add_argument("--broker", metavar="URL", help=BROKER_OVERRIDE_HELP)
        if name == "coordinator":
            engine.add_argument(
                "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there, overriding the config's"
            )
            engine.add_argument(
                "--standby",
                action="append",
                default=[],
                metavar="FILE",
                help="another coordinator's TOML file (repeatable): take it over from its journal when its "
                "process dies; with it, this --config's coordinator too is served once its journal is free",
            )
        else:
            engine.add_argument(
                "--party", metavar="ID", help="the registered party it signs as (default: the coordinator's)"
            )
            engine.add_argument(
                "--key", metavar="FILE", help="that party's private key (default: the coordinator's key file)"
            )
        engine.set_defaults(run=_engine)

    intermediary = command(
        "intermediary",
        "run a market maker's service: quotes and accepts hops of multi-hop payments",
        "Run an intermediary (a market maker or correspondent) on an MQTT broker until SIGTERM or SIGINT: it "
        "answers coordinators' quote requests from its book of offers and signs the hops it accepts "
        "(docs/PROTOCOL.md, multi-hop payments).",
    )
    intermediary.add_argument("--config", required=True, metavar="FILE", help="the intermediary's TOML file")
    intermediary.add_argument("--broker", metavar="URL", help=BROKER_OVERRIDE_HELP)
    intermediary.set_defaults(run=_intermediary)

    pay = command(
        "pay",
        "pay another ledger's currency through intermediaries the coordinator finds",
        "Send a payer's signed multi-hop payment to the coordinator: it pays --amount into --to from the "
        "payer's --from account, in another currency on another ledger, through intermediaries chosen from "
        "their quotes, spending at most --source-max; print the outcome and each hop.",
    )
    _back_office(pay, "the payer (who signs)")
    pay.add_argument("--id", required=True, help="the payment's id (sent again: its outcome, nothing paid twice)")
    pay.add_argument(
        "--from",
        dest="source",
        required=True,
        type=_cash_account,
        metavar="LEDGER:ACCOUNT:CCY",
        help="the payer's account it pays from, and the currency",
    )
    pay.add_argument(
        "--source-max", required=True, metavar="AMOUNT", help="the most it spends of that currency, such as 1100.00"
    )
    pay.add_argument("--payee", required=True, metavar="ID", help="the party paid")
    pay.add_argument(
        "--to",
        dest="target",
        required=True,
        type=_cash_account,
        metavar="LEDGER:ACCOUNT:CCY",
        help="the payee's account, and the currency it is paid in",
    )
    pay.add_argument("--amount", required=True, metavar="AMOUNT", help="what the payee gets, such as 1000.00")
    pay.add_argument(
        "--deadline-s",
        type=float,
        default=60.0,
        metavar="S",
        help="how long the coordinator has to route it and decide (default: 60)",
    )
    pay.set_defaults(run=_pay)

    status = command(
        "status",
        "a settlement's phase and the time of each step",
        "Ask the coordinator for a settlement's phase and the time of each step, signed by it.",
    )
    status.add_argument("id", help="the settlement id")
    status.add_argument("--config", required=True, metavar="FILE", help="the coordinator's TOML file")
    status.add_argument("--broker", metavar="URL", help=BROKER_OVERRIDE_HELP)
    status.set_defaults(run=_status)

    broker = command(
        "broker",
        "run a local Mosquitto with Lockstep's settings",
        "Run Mosquitto in the foreground with Lockstep's settings (TCP_NODELAY, deep queues), open "
        "or secured; SIGTERM and SIGINT reach it, and a temporary config folder is removed when it "
        "stops.",
    )
    broker.add_argument("--port", type=int, default=1883, metavar="N", help="the port to listen on (default: 1883)")
    broker.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    broker.add_argument(
        "--dir", metavar="DIR", help="where to write its config, kept afterwards (default: a temporary folder, removed)"
    )
    broker.add_argument(
        "--password-file",
        metavar="FILE",
        help="secured: Mosquitto's password file (mosquitto_passwd); needs --acl-file",
    )
    broker.add_argument(
        "--acl-file", metavar="FILE", help="secured: the ACL file (docs/DEPLOY.md); needs --password-file"
    )
    broker.add_argument("--certfile", metavar="FILE", help="TLS: the broker's certificate (PEM); needs --keyfile")
    broker.add_argument("--keyfile", metavar="FILE", help="TLS: the certificate's private key (PEM); needs --certfile")
    broker.set_defaults(run=_broker)

    bench = command(
        "bench",
        "cross-ledger against same-ledger settlement, measured in one run",
        "Measure cross-ledger (HTLC) against same-ledger settlement on the same workload, in one run; "
        "results and charts in --out (benchmarks/README.md).",
    )
    from benchmarks.options import arguments

    arguments(bench)
    bench.set_defaults(run=_bench)

    chaos = command(
        "chaos",
        "a DvP and PvP workload under faults, then the audit",
        "Run a DvP and PvP workload under injected faults, then the audit and a live observer; "
        "report faults, outcomes, violations and every one-legged settlement (docs/SAFETY.md).",
    )
    chaos.add_argument(
        "--seconds", type=float, default=30.0, metavar="N", help="how long to inject faults (default: 30)"
    )
    chaos.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="S",
        help="seed of the workload and the faults: the same seed, the same run (default: 1)",
    )
    chaos.add_argument(
        "--bus",
        choices=["memory", "mqtt"],
        default="memory",
        help="memory: the whole world in this process, kills by cancellation; "
        "mqtt: Mosquitto and every service its own process, kills by SIGKILL (default: memory)",
    )
    chaos.add_argument(
        "--faults",
        metavar="LIST",
        help="comma-separated; with --bus memory: drop, duplicate, delay, kill-coordinator, "
        "kill-ledger, skew, partition; with --bus mqtt: kill-coordinator, kill-ledger, "
        "broker-restart (with --broker-cluster, broker-node-kill instead) (default: all of the mode's)",
    )
    chaos.add_argument(
        "--queue",
        action="store_true",
        help="trade through the matching desk, most trades short of bonds or cash at first and waiting in "
        "its settlement queue until a funder hands them back (memory bus); reports trades and value released",
    )
    chaos.add_argument(
        "--paths",
        action="store_true",
        help="pay CHF from EUR through market makers the coordinator chooses from their quotes, each hop its own "
        "lock on its own ledger (memory bus); the intermediaries never claim; reports payments by path",
    )
    chaos.add_argument(
        "--long-outages",
        action="store_true",
        help="outages of Δ to 10 Δ, the safety margin, overlapping as they fall (default: shorter than Δ)",
    )
    chaos.add_argument(
        "--backstop-ms",
        type=int,
        metavar="MS",
        help="the locks' backstop, short enough for an outage to outlast it (default: the timing's, hours)",
    )
    chaos.add_argument(
        "--settlements",
        type=int,
        metavar="N",
        help="stop once this many settlements have ended (default: run for --seconds)",
    )
    chaos.add_argument(
        "--coordinators",
        type=int,
        default=1,
        metavar="N",
        help="with --bus mqtt: N coordinators sharing the settlement ids, each its own process standing by "
        "for the others: a killed one is taken over from its journal (default: 1)",
    )
    chaos.add_argument(
        "--broker-cluster",
        metavar="nats:N",
        help="with --bus mqtt: the broker a NATS cluster of N nodes (3 or more), every service given every "
        "node's URL; the fault broker-node-kill SIGKILLs one node (default: one Mosquitto)",
    )
    chaos.add_argument(
        "--broker-kind",
        choices=["mosquitto", "nats", "rabbitmq"],
        default="mosquitto",
        help="with --bus mqtt: the broker, one of its own on a free port: Mosquitto, nats-server with its MQTT "
        "listener, or a RabbitMQ node with its MQTT plugin (which starts too slowly for broker-restart) "
        "(default: mosquitto)",
    )
    chaos.add_argument(
        "--store",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="with --bus mqtt: the ledgers' books and the coordinators' journals: files, or a scratch "
        "database on --postgres, a schema each (default: sqlite)",
    )
    chaos.add_argument(
        "--postgres",
        default=LOCAL_POSTGRES,
        metavar="URL",
        help=f"the PostgreSQL server for --store postgresql (default: {LOCAL_POSTGRES})",
    )
    chaos.add_argument(
        "--qos",
        type=int,
        choices=[0, 1],
        default=1,
        help="with --bus mqtt and one broker: the quality of service every client publishes and subscribes at; "
        "at 0 no message is acknowledged on any hop, and one lost is found out by its sender's timeout alone "
        "(a NATS cluster's clients are at 0 already) (default: 1)",
    )
    chaos.add_argument(
        "--strikes",
        type=int,
        metavar="N",
        help="with --bus mqtt: stop once each fault has struck N times and its outage is over "
        "(default: run for --seconds)",
    )
    chaos.set_defaults(run=_chaos)

    conformance = command(
        "conformance",
        "check a ledger service against docs/PROTOCOL.md",
        "Check any ledger service over the bus against docs/PROTOCOL.md: one line per check, "
        "exit status 1 on any failure.",
    )
    conformance.add_argument("--broker", required=True, metavar="URL", help=BROKER_URL_HELP)
    conformance.add_argument("--ledger", required=True, metavar="ID", help="the ledger id to check")
    conformance.add_argument(
        "--keys", required=True, metavar="DIR", help="a folder with registry.toml and keys/<party>.pem"
    )
    conformance.set_defaults(run=_conformance)

    rotate = command(
        "rotate-key",
        "a ledger's operator registers a participant's new key there",
        "A ledger's operator registers a participant's new public key on that ledger; from that "
        "journal entry on, the old key moves nothing there (docs/SECURITY.md).",
    )
    rotate.add_argument("--broker", required=True, metavar="URL", help=BROKER_URL_HELP)
    rotate.add_argument("--registry", required=True, metavar="FILE", help="the consortium's registry.toml")
    rotate.add_argument("--ledger", required=True, metavar="ID", help="the ledger on which the key changes")
    rotate.add_argument("--operator", required=True, metavar="ID", help="that ledger's operator (who signs)")
    rotate.add_argument(
        "--operator-key", required=True, metavar="FILE", help="the operator's private key (PEM, mode 600)"
    )
    rotate.add_argument("--party", required=True, metavar="ID", help="the participant whose key changes")
    rotate.add_argument("--public-key", required=True, metavar="FILE", help="its new public key (PEM)")
    rotate.set_defaults(run=_rotate_key)

    from protocols.servicing import DEADLINE_MS_DEFAULT

    action = command(
        "corporate-action",
        "an issuer's coupon or redemption mandate to its paying agent",
        "An issuer signs a coupon or redemption mandate and sends it to its paying agent (the "
        "coordinator), or asks how one stands; prints every holder's due (docs/SERVICING.md).",
        usage="%(prog)s [-h] --broker URL --registry FILE --id ID [--coordinator ID]\n"
        "       (--query | --issuer ID --issuer-key FILE --isin ISIN --kind {coupon,redemption}\n"
        "        --date YYYY-MM-DD --securities-account A --cash-account A\n"
        "        [--securities-ledger ID] [--cash-ledger ID] [--currency CCY] [--deadline-ms MS])",
    )
    action.add_argument("--broker", required=True, metavar="URL", help=BROKER_URL_HELP)
    action.add_argument("--registry", required=True, metavar="FILE", help="the consortium's registry.toml")
    action.add_argument(
        "--coordinator", default="coordinator", metavar="ID", help="the paying agent's id (default: coordinator)"
    )
    action.add_argument("--id", required=True, help="the action's id (sent again: its status, nothing paid twice)")
    choice = action.add_mutually_exclusive_group(required=True)
    choice.add_argument("--query", action="store_true", help="only ask how the action stands")
    choice.add_argument("--issuer", metavar="ID", help="send the mandate of this issuing party, who signs")
    mandate = action.add_argument_group("the mandate, with --issuer", f"{', '.join(MANDATE)} are then required")
    mandate.add_argument("--issuer-key", metavar="FILE", help="the issuer's private key (PEM, mode 600)")
    mandate.add_argument("--isin", help="the instrument, by its ISIN")
    mandate.add_argument("--kind", choices=["coupon", "redemption"], help="a coupon, or the redemption at maturity")
    mandate.add_argument("--date", type=_date, metavar="YYYY-MM-DD", help="the payment date (UTC)")
    mandate.add_argument("--securities-account", metavar="A", help="the issuer's account on the securities ledger")
    mandate.add_argument("--cash-account", metavar="A", help="the issuer's account on the cash ledger, which pays")
    mandate.add_argument(
        "--securities-ledger", default="csd", metavar="ID", help="the ledger holding the instrument (default: csd)"
    )
    mandate.add_argument(
        "--cash-ledger", default="cbdc-eur", metavar="ID", help="the ledger that pays (default: cbdc-eur)"
    )
    mandate.add_argument("--currency", default="EUR", metavar="CCY", help="the currency paid (default: EUR)")
    mandate.add_argument(
        "--deadline-ms",
        type=int,
        default=DEADLINE_MS_DEFAULT,
        metavar="MS",
        help=f"how long after the payment date's start payments may run (default: {DEADLINE_MS_DEFAULT})",
    )
    action.set_defaults(run=_corporate_action, usage_error=action.error)

    for name, text, description in (
        (
            "submit",
            "send a sese.023 or pacs.009 instruction to the coordinator's matching desk",
            "Send a party's own side of a trade, an ISO 20022 sese.023 (DvP) or pacs.009 (PvP), validated here "
            "first and signed with its key, to the matching desk; print each status advice (docs/ISO20022.md).",
        ),
        (
            "hold",
            "hold a party's own instruction at the matching desk, or release it",
            "Hold the party's own settlement instruction, so that it does not settle until released, or "
            "release it (--release); print its latest advice (docs/PROTOCOL.md, hold_instruction).",
        ),
        (
            "offset",
            "ask the settlement queue to look now for waiting trades that fund one another",
            "Ask the matching desk's settlement queue to run liquidity saving now, besides its interval: the "
            "waiting trades whose net effect each payer can fund settle together as linked settlements; print "
            "what it released and the liquidity saved. Signed by the coordinator itself or an observer.",
        ),
        (
            "advices",
            "a party's status advices and confirmations from the matching desk",
            "Print every status advice and confirmation the matching desk wrote for a party, from a position on.",
        ),
    ):
        desk = command(name, text, description)
        if name == "hold":
            desk.add_argument("instruction", metavar="ID", help="the id of the party's instruction")
            desk.add_argument("--release", action="store_true", help="release it (default: hold it)")
            desk.add_argument("--id", help="this hold's own id, which makes it idempotent (default: hold-TIME)")
        elif name == "submit":
            desk.add_argument("file", help="the ISO 20022 document (sese.023.001.11 or pacs.009.001.11)")
            desk.add_argument("--id", help="the instruction id (default: the document's own reference)")
            desk.add_argument(
                "--wait",
                type=float,
                default=0.0,
                metavar="S",
                help="seconds to follow its advices until settled, failed or cancelled (default: 0)",
            )
        elif name == "advices":
            desk.add_argument(
                "--from", type=int, default=0, metavar="SEQ", help="the first advice position (default: 0)"
            )
        _back_office(desk, "the instructing party (who signs)" if name != "offset" else "who asks (who signs)")
        if name in ("submit", "advices"):
            desk.add_argument(
                "--out",
                metavar="DIR",
                help="write each advice to this folder as PARTY-SEQ-STATUS.xml (default: none written)",
            )
        desk.set_defaults(run=_submit)

    statement = command(
        "statement",
        "a camt.053 statement of a cash account, from its ledger's journal",
        "Write a camt.053 statement of one cash account, from its ledger's journal read over the "
        "bus and checked (hash chain and the ledger's signature).",
    )
    statement.add_argument("--broker", required=True, metavar="URL", help=BROKER_URL_HELP)
    statement.add_argument(
        "--registry", required=True, metavar="FILE", help="the consortium's registry.toml, with the ledger's key"
    )
    statement.add_argument("--ledger", required=True, metavar="ID", help="the cash ledger holding the account")
    statement.add_argument("--account", required=True, metavar="A", help="the account")
    statement.add_argument("--currency", required=True, metavar="CCY", help="the currency, ISO 4217 (such as EUR)")
    statement.add_argument(
        "--from-seq", type=int, default=0, metavar="SEQ", help="the first journal entry covered (default: 0)"
    )
    statement.add_argument(
        "--to-seq", type=int, metavar="SEQ", help="the last journal entry covered (default: the head)"
    )
    statement.add_argument("--out", metavar="FILE", help="write the document here (default: standard output)")
    statement.set_defaults(run=_statement)

    eod = command(
        "end-of-day",
        "a participant's end-of-day report: camt.053 of its cash accounts, the advice of each open instruction",
        "Write a participant's end-of-day report to a folder: a camt.053 statement of the day's bookings of "
        "each --cash account, from its ledger's journal, checked; and the latest status advice (sese.024, or "
        "pacs.002) of each of its instructions still open at the matching desk (unmatched, matched or pending).",
    )
    _back_office(eod, "the participant (who signs its queries)")
    eod.add_argument("--date", type=_date, metavar="YYYY-MM-DD", help="the settlement day, UTC (default: today)")
    eod.add_argument(
        "--cash",
        action="append",
        default=[],
        type=_cash_account,
        metavar="LEDGER:ACCOUNT:CCY",
        help="a cash account to state the day's bookings of (again for more)",
    )
    eod.add_argument("--out", required=True, metavar="DIR", help="the folder the report's documents go to")
    eod.set_defaults(run=_end_of_day)

    from engine.audit.graces import AUDIT_GRACE_MS

    audit = command(
        "audit",
        "verify every ledger's journal and every settlement across ledgers",
        "Verify every ledger's journal (chain, signatures, replay, each entry against its instruction), "
        "a database's tables against it, and every settlement across ledgers; exit status 1 on any "
        "violation.",
    )
    audit.add_argument(
        "--registry", required=True, metavar="FILE", help="the consortium's registry.toml, with the ledgers' keys"
    )
    source = audit.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--db",
        action="append",
        metavar="FILE|URL",
        help="a ledger's database, read-only: its SQLite file or postgresql:// URL (once per ledger)",
    )
    source.add_argument("--broker", metavar="URL", help="read the journals over this MQTT broker instead")
    audit.add_argument(
        "--ledger", action="append", default=[], metavar="ID", help="with --broker: a ledger to read (once per ledger)"
    )
    audit.add_argument(
        "--grace-ms",
        type=int,
        default=AUDIT_GRACE_MS,
        metavar="MS",
        help=f"how long a lock may stay held past its expiry (default: {AUDIT_GRACE_MS})",
    )
    audit.set_defaults(run=_audit)

    provenance = command(
        "provenance",
        "where a holding came from, lot by lot, or where an issue went (the token view)",
        "Read one ledger's journal, checked as the audit checks it, and print the token view: an "
        "account's units of an asset as lots, each with the issue that made it and every entry that "
        "moved it (--account, --asset); or where an issue's units are now (--issuance SEQ). Exit "
        "status 1 if the token view and the balances disagree.",
    )
    provenance.add_argument(
        "--registry", required=True, metavar="FILE", help="the consortium's registry.toml, with the ledger's key"
    )
    where = provenance.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="FILE|URL", help="the ledger's database, read-only")
    where.add_argument("--broker", metavar="URL", help="read the journal over this MQTT broker instead")
    provenance.add_argument("--ledger", metavar="ID", help="with --broker: the ledger to read")
    provenance.add_argument("--account", metavar="A", help="the account whose holding to trace")
    provenance.add_argument("--asset", metavar="CODE", help="with --account: the asset (ISIN or currency)")
    provenance.add_argument("--issuance", type=int, metavar="SEQ", help="the issue entry whose units to follow")
    provenance.set_defaults(run=_provenance)

    from engine.audit.graces import OBSERVER_GRACE_MS

    observer = command(
        "observer",
        "follow every ledger's journal live and alert on any violation",
        "Follow every ledger's journal live and log an ALERT line within a second of a violation, "
        "until SIGTERM or SIGINT.",
    )
    observer.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the coordinator's TOML file: the registry, the broker and the ledgers to follow",
    )
    observer.add_argument("--broker", metavar="URL", help=BROKER_OVERRIDE_HELP)
    observer.add_argument(
        "--grace-ms",
        type=int,
        default=OBSERVER_GRACE_MS,
        metavar="MS",
        help="how long past a lock's expiry or a settlement's deadline, on the observer's clock, "
        "before a leg counts as beyond claiming: more than any clock skew plus the observer's "
        f"lag (default: {OBSERVER_GRACE_MS})",
    )
    observer.set_defaults(run=_observer)

    console = command(
        "console",
        "the read-only web console for operators and the supervisor",
        "Serve the console (docs/CONSOLE.md): every ledger's journal followed live as the observer "
        "follows it, its alerts, the holders of each asset and each participant's positions across "
        "ledgers, to users signed in with a password from --users; until SIGTERM or SIGINT.",
    )
    console.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the coordinator's TOML file: the registry, the broker and the ledgers to follow",
    )
    console.add_argument(
        "--users",
        required=True,
        metavar="FILE",
        help="who may sign in: one name:password a line, the file readable by its owner alone",
    )
    console.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where to serve the pages (default: 127.0.0.1:8080)",
    )
    console.add_argument("--tls-cert", metavar="FILE", help="serve over HTTPS only: the certificate, PEM")
    console.add_argument("--tls-key", metavar="FILE", help="and its private key, PEM")
    console.add_argument(
        "--party",
        metavar="ID",
        help="the supervisor: a party with the observer role, as whom each settlement's ISO 20022 advices "
        "are read from its coordinator (default: none, and no advices shown)",
    )
    console.add_argument("--key", metavar="FILE", help="and its private key, PEM")
    console.add_argument("--broker", metavar="URL", help=BROKER_OVERRIDE_HELP)
    console.add_argument(
        "--grace-ms",
        type=int,
        default=OBSERVER_GRACE_MS,
        metavar="MS",
        help=f"as the observer's (default: {OBSERVER_GRACE_MS})",
    )
    console.set_defaults(run=_console)
    return root


def expected(error: BaseException) -> ExpectedFailure | None:
    """The expected failure `error` is, or the first of a group of nothing else (as a
    trio nursery raises them); None for anything else, a bug."""
    if isinstance(error, ExpectedFailure):
        return error
    if isinstance(error, BaseExceptionGroup):
        failures, rest = error.split(ExpectedFailure)
        if rest is None:
            first: BaseException | None = failures
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            assert isinstance(first, ExpectedFailure)  # split left nothing else
            return first
    return None


def interrupted(error: BaseException) -> bool:
    """A KeyboardInterrupt, alone or as all of a group (as a trio nursery raises it)."""
    if isinstance(error, BaseExceptionGroup):
        return error.split(KeyboardInterrupt)[1] is None
    return isinstance(error, KeyboardInterrupt)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        return args.run(args)
    except (ExpectedFailure, KeyboardInterrupt, BaseExceptionGroup) as error:
        if interrupted(error):  # Ctrl-C, or SIGTERM to a command that takes it so: unwound, not a bug
            print(f"lockstep {args.command}: interrupted", file=sys.stderr)
            return 130
        failure = expected(error)
        if failure is None:
            raise
        if args.log_level == "debug":
            traceback.print_exception(error)
        print(f"lockstep {args.command}: {failure}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
