"""The `lockstep` command: every service and tool of a local world.

    lockstep demo [--broker URL]         a whole local world settling, with a report
    lockstep ledger --config FILE [--metrics HOST:PORT]
                                         run one ledger service over MQTT
    lockstep coordinator --config FILE [--metrics HOST:PORT]
                                         run the coordinator over MQTT
    lockstep watchtower --config FILE    run a watchtower over MQTT
    lockstep status ID --config FILE     a settlement's phase and steps, from the coordinator
    lockstep broker [--port N]           run a Mosquitto with Lockstep's settings
    lockstep bench [--quick]             cross-ledger against same-ledger settlement, one run
    lockstep chaos --seconds N --seed S [--bus memory|mqtt] [--faults LIST] [--settlements N]
                                         the workload under faults, then the audit
    lockstep conformance --broker URL --ledger ID --keys DIR
                                         check any ledger service against PROTOCOL.md
    lockstep audit --registry FILE (--db FILE ... | --broker URL --ledger ID ...)
                                         verify every journal, check every settlement across ledgers
    lockstep observer --config FILE      follow every ledger's journal live; ALERT on any violation
    lockstep rotate-key --broker URL --registry FILE --ledger ID --operator ID --operator-key FILE
                        --party ID --public-key FILE
                                         a ledger's operator registers a participant's new key there
    lockstep corporate-action --broker URL --registry FILE --id ID (--query | --issuer ID --issuer-key FILE --isin ISIN
                        --kind coupon|redemption --date YYYY-MM-DD ...)
                                         an issuer's coupon or redemption mandate to its paying agent
    lockstep submit FILE --broker URL --registry FILE --party ID --key FILE [--wait S] [--out DIR]
                                         send a sese.023 or pacs.009 instruction to the matching desk
    lockstep advices --broker URL --registry FILE --party ID --key FILE [--from SEQ] [--out DIR]
                                         a party's status advices and confirmations (ISO 20022)
    lockstep statement --broker URL --registry FILE --ledger ID --account A --currency CCY [--out FILE]
                                         a camt.053 statement of a cash account, from its journal
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

import trio


def _ledger(args: argparse.Namespace) -> int:
    from ledgers import daemon
    try:
        trio.run(daemon.run, args.config, args.broker, args.metrics)
    except daemon.DaemonError as error:
        print(f"lockstep ledger: {error}", file=sys.stderr)
        return 2
    return 0


def _broker(args: argparse.Namespace) -> int:
    """Write the config, then become Mosquitto, so that signals reach the broker itself."""
    import os
    from engine.broker import Broker, mosquitto_path
    try:
        broker = Broker(args.dir or tempfile.mkdtemp(prefix="lockstep-broker-"), port=args.port, host=args.host,
                        password_file=args.password_file, acl_file=args.acl_file,
                        certfile=args.certfile, keyfile=args.keyfile)
    except ValueError as error:
        print(f"lockstep broker: {error}", file=sys.stderr)
        return 2
    print(f"mosquitto on {broker.url} (config {broker.config_path})", flush=True)
    os.execv(mosquitto_path(), ["mosquitto", "-c", str(broker.config_path)])


def _engine(args: argparse.Namespace) -> int:
    from engine import daemon
    try:
        if args.command == "coordinator":
            trio.run(daemon.run_coordinator, args.config, args.broker, args.metrics)
        else:
            trio.run(daemon.run_watchtower, args.config, args.broker)
    except daemon.DaemonError as error:
        print(f"lockstep {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


def _status(args: argparse.Namespace) -> int:
    from engine import daemon, status
    try:
        return trio.run(status.main, args.config, args.id, args.broker)
    except daemon.DaemonError as error:
        print(f"lockstep status: {error}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from engine import demo
    return demo.main(args.broker)


def _bench(args: argparse.Namespace) -> int:
    from benchmarks import bench
    logging.getLogger().setLevel(logging.WARNING)
    return bench.main(args)


def _chaos(args: argparse.Namespace) -> int:
    """In this process on the memory bus, or with every service a process on Mosquitto."""
    from engine import chaos, chaos_processes
    logging.getLogger().setLevel(logging.ERROR)
    mode = chaos_processes if args.bus == "mqtt" else chaos
    listed = ",".join(mode.FAULTS) if args.faults is None else args.faults
    faults = tuple(fault for fault in listed.split(",") if fault)
    return mode.main(args.seconds, args.seed, faults, args.long_outages, args.settlements)


def _conformance(args: argparse.Namespace) -> int:
    from engine.conformance import main
    return trio.run(main, args.broker, args.ledger, args.keys)


def _rotate_key(args: argparse.Namespace) -> int:
    from engine import daemon, rotate_key
    try:
        return trio.run(rotate_key.main, args.broker, args.registry, args.ledger, args.operator, args.operator_key,
                        args.party, args.public_key)
    except daemon.DaemonError as error:
        print(f"lockstep rotate-key: {error}")
        return 2


def _corporate_action(args: argparse.Namespace) -> int:
    from engine import corporate_action, daemon
    try:
        return trio.run(corporate_action.main, args)
    except daemon.DaemonError as error:
        print(f"lockstep corporate-action: {error}", file=sys.stderr)
        return 2


def _submit(args: argparse.Namespace) -> int:
    from engine import daemon, submit
    try:
        if args.command == "submit":
            return trio.run(submit.main, args.file, args.broker, args.registry, args.coordinator, args.party, args.key,
                            args.id, args.wait, args.out)
        return trio.run(submit.fetch, args.broker, args.registry, args.coordinator, args.party, args.key,
                        getattr(args, "from"), args.out)
    except daemon.DaemonError as error:
        print(f"lockstep {args.command}: {error}", file=sys.stderr)
        return 2


def _statement(args: argparse.Namespace) -> int:
    from engine import daemon, statement
    try:
        return trio.run(statement.main, args.broker, args.registry, args.ledger, args.account, args.currency,
                        args.from_seq, args.to_seq, args.out)
    except daemon.DaemonError as error:
        print(f"lockstep statement: {error}", file=sys.stderr)
        return 2


def _audit(args: argparse.Namespace) -> int:
    from engine.audit import main
    return main(args.registry, args.db, args.broker, args.ledger, args.grace_ms)


def _observer(args: argparse.Namespace) -> int:
    from engine import daemon, observer
    try:
        trio.run(observer.serve, args.config, args.broker, args.grace_ms)
    except daemon.DaemonError as error:
        print(f"lockstep observer: {error}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="lockstep", description="Multi-ledger atomic settlement.")
    root.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                      help="what services log to stderr, one line per event (default: info)")
    commands = root.add_subparsers(dest="command", required=True)

    ledger = commands.add_parser("ledger", help="run one ledger service over MQTT")
    ledger.add_argument("--config", required=True, help="the ledger's TOML file")
    ledger.add_argument("--broker", help="broker URL, overriding the config's")
    ledger.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there, overriding the config's")
    ledger.set_defaults(run=_ledger)

    demo = commands.add_parser("demo", help="run a whole local world and report what happened")
    demo.add_argument("--broker", help="run each ledger as its own process on this MQTT broker")
    demo.set_defaults(run=_demo)

    for name, text in (("coordinator", "run the coordinator over MQTT"), ("watchtower", "run a watchtower over MQTT")):
        engine = commands.add_parser(name, help=text)
        engine.add_argument("--config", required=True, help="the coordinator's TOML file")
        engine.add_argument("--broker", help="broker URL, overriding the config's")
        if name == "coordinator":
            engine.add_argument("--metrics", metavar="HOST:PORT",
                                help="serve Prometheus metrics there, overriding the config's")
        engine.set_defaults(run=_engine)

    status = commands.add_parser("status", help="a settlement's phase and the time of each step")
    status.add_argument("id", help="the settlement id")
    status.add_argument("--config", required=True, help="the coordinator's TOML file")
    status.add_argument("--broker", help="broker URL, overriding the config's")
    status.set_defaults(run=_status)

    broker = commands.add_parser("broker", help="run a local Mosquitto with Lockstep's settings")
    broker.add_argument("--port", type=int, default=1883)
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--dir", help="where to write its config (default: a temporary folder)")
    broker.add_argument("--password-file", help="secured: Mosquitto's password file (mosquitto_passwd); needs --acl-file")
    broker.add_argument("--acl-file", help="secured: the ACL file (docs/DEPLOY.md); needs --password-file")
    broker.add_argument("--certfile", help="TLS: the broker's certificate (PEM); needs --keyfile")
    broker.add_argument("--keyfile", help="TLS: the certificate's private key (PEM)")
    broker.set_defaults(run=_broker)

    bench = commands.add_parser("bench", help="cross-ledger against same-ledger settlement, measured in one run")
    from benchmarks.bench import arguments
    arguments(bench)
    bench.set_defaults(run=_bench)

    chaos = commands.add_parser("chaos", help="a DvP and PvP workload under faults, then the audit")
    chaos.add_argument("--seconds", type=float, default=30.0)
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--bus", choices=["memory", "mqtt"], default="memory",
                       help="memory: the whole world in this process, kills by cancellation (default); "
                            "mqtt: Mosquitto and every service its own process, kills by SIGKILL")
    chaos.add_argument("--faults", help="comma-separated; with --bus memory: drop, duplicate, delay, kill-coordinator, "
                                        "kill-ledger, skew, partition; with --bus mqtt: kill-coordinator, kill-ledger, "
                                        "broker-restart (default: all of the mode's)")
    chaos.add_argument("--long-outages", action="store_true", help="outages longer than the safety margin Δ")
    chaos.add_argument("--settlements", type=int, help="stop once this many settlements have ended (or at --seconds)")
    chaos.set_defaults(run=_chaos)

    conformance = commands.add_parser("conformance", help="check a ledger service against docs/PROTOCOL.md")
    conformance.add_argument("--broker", required=True, help="broker URL, such as mqtt://127.0.0.1:1883")
    conformance.add_argument("--ledger", required=True, help="the ledger id to check")
    conformance.add_argument("--keys", required=True, help="a folder with registry.toml and keys/<party>.pem")
    conformance.set_defaults(run=_conformance)

    rotate = commands.add_parser("rotate-key", help="a ledger's operator registers a participant's new key there")
    rotate.add_argument("--broker", required=True, help="broker URL, such as mqtt://127.0.0.1:1883")
    rotate.add_argument("--registry", required=True, help="the consortium's registry.toml")
    rotate.add_argument("--ledger", required=True, help="the ledger on which the key changes")
    rotate.add_argument("--operator", required=True, help="that ledger's operator (who signs)")
    rotate.add_argument("--operator-key", required=True, help="the operator's private key (PEM, mode 600)")
    rotate.add_argument("--party", required=True, help="the participant whose key changes")
    rotate.add_argument("--public-key", required=True, help="its new public key (PEM)")
    rotate.set_defaults(run=_rotate_key)

    action = commands.add_parser("corporate-action", help="an issuer's coupon or redemption mandate to its paying agent")
    action.add_argument("--broker", required=True, help="broker URL, such as mqtt://127.0.0.1:1883")
    action.add_argument("--registry", required=True, help="the consortium's registry.toml")
    action.add_argument("--coordinator", default="coordinator", help="the paying agent's id (default: coordinator)")
    action.add_argument("--id", required=True, help="the action's id (sent again: its status, nothing paid twice)")
    action.add_argument("--query", action="store_true", help="only ask how the action stands")
    action.add_argument("--issuer", help="the issuing party, who signs")
    action.add_argument("--issuer-key", help="the issuer's private key (PEM, mode 600)")
    action.add_argument("--isin")
    action.add_argument("--kind", choices=["coupon", "redemption"])
    action.add_argument("--date", help="the payment date, YYYY-MM-DD (UTC)")
    action.add_argument("--securities-ledger", default="csd")
    action.add_argument("--cash-ledger", default="cbdc-eur")
    action.add_argument("--securities-account", help="the issuer's account on the securities ledger")
    action.add_argument("--cash-account", help="the issuer's account on the cash ledger, which pays")
    action.add_argument("--currency", default="EUR")
    from engine.corporate_action import DEADLINE_MS_DEFAULT
    action.add_argument("--deadline-ms", type=int, default=DEADLINE_MS_DEFAULT,
                        help=f"how long after the payment date's start payments may run (default: {DEADLINE_MS_DEFAULT})")
    action.set_defaults(run=_corporate_action)

    for name, text in (("submit", "send a sese.023 or pacs.009 instruction to the coordinator's matching desk"),
                       ("advices", "a party's status advices and confirmations from the matching desk")):
        desk = commands.add_parser(name, help=text)
        if name == "submit":
            desk.add_argument("file", help="the ISO 20022 document (sese.023.001.11 or pacs.009.001.11)")
            desk.add_argument("--id", help="the instruction id (default: the document's own reference)")
            desk.add_argument("--wait", type=float, default=0.0,
                              help="seconds to follow its advices until settled, failed or cancelled (default: 0)")
        else:
            desk.add_argument("--from", type=int, default=0, help="the first advice position (default: 0)")
        desk.add_argument("--broker", required=True, help="broker URL, such as mqtt://127.0.0.1:1883")
        desk.add_argument("--registry", required=True, help="the consortium's registry.toml")
        desk.add_argument("--coordinator", default="coordinator", help="the coordinator's id (default: coordinator)")
        desk.add_argument("--party", required=True, help="the instructing party (who signs)")
        desk.add_argument("--key", required=True, help="the party's private key (PEM, mode 600)")
        desk.add_argument("--out", help="write each advice to this folder as PARTY-SEQ-STATUS.xml")
        desk.set_defaults(run=_submit)

    statement = commands.add_parser("statement", help="a camt.053 statement of a cash account, from its ledger's journal")
    statement.add_argument("--broker", required=True, help="broker URL, such as mqtt://127.0.0.1:1883")
    statement.add_argument("--registry", required=True, help="the consortium's registry.toml, with the ledger's key")
    statement.add_argument("--ledger", required=True)
    statement.add_argument("--account", required=True)
    statement.add_argument("--currency", required=True)
    statement.add_argument("--from-seq", type=int, default=0, help="the first journal entry covered (default: 0)")
    statement.add_argument("--to-seq", type=int, help="the last journal entry covered (default: the head)")
    statement.add_argument("--out", help="write the document here (default: standard output)")
    statement.set_defaults(run=_statement)

    audit = commands.add_parser("audit", help="verify every ledger's journal and every settlement across ledgers")
    audit.add_argument("--registry", required=True, help="the consortium's registry.toml, with the ledgers' keys")
    source = audit.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", action="append", help="a ledger's database file, read-only (once per ledger)")
    source.add_argument("--broker", help="read the journals over this MQTT broker instead")
    audit.add_argument("--ledger", action="append", default=[], help="with --broker: a ledger to read (once per ledger)")
    from engine.audit import GRACE_MS
    audit.add_argument("--grace-ms", type=int, default=GRACE_MS,
                       help=f"how long a lock may stay held past its expiry (default: {GRACE_MS})")
    audit.set_defaults(run=_audit)

    observer = commands.add_parser("observer", help="follow every ledger's journal live and alert on any violation")
    observer.add_argument("--config", required=True,
                          help="the coordinator's TOML file: the registry, the broker and the ledgers to follow")
    observer.add_argument("--broker", help="broker URL, overriding the config's")
    from engine.observer import GRACE_MS as OBSERVER_GRACE_MS
    observer.add_argument("--grace-ms", type=int, default=OBSERVER_GRACE_MS,
                          help="how long past a lock's expiry or a settlement's deadline, on the observer's clock, "
                               "before a leg counts as beyond claiming: more than any clock skew plus the observer's "
                               f"lag (default: {OBSERVER_GRACE_MS})")
    observer.set_defaults(run=_observer)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
