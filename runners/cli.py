"""The ``arl`` command: parse, call one library function, print.

Errors a user can fix end in one line on stderr and exit code 2; a failed
verification exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from arl.ledger import ArlError, Ledger, __version__
from arl.ledger.store import STORE_HELP, hostname
from arl.ledger.verify import verify


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL", help=STORE_HELP)


def _token_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", metavar="FILE",
                   help="token file (default: $ARL_TOKENS, else ~/.config/arl/tokens.jsonl)")


def cmd_verify(args: argparse.Namespace) -> int:
    from arl.ledger.anchors import read_anchors

    anchors = [a for path in args.anchors or () for a in read_anchors(path)]
    with Ledger.open(args.store, read_only=True) as ledger:
        def progress(n: int) -> None:
            print(f"  … {n:,} events checked", file=sys.stderr)

        report = verify(ledger, expect_head=args.expect_head, anchors=anchors, progress=progress)
        where = ledger.url.display()
    if report.ok:
        rate = report.events / report.seconds if report.seconds else 0.0
        print(
            f"ok: {report.events:,} events and {report.blobs:,} blobs in {where} verified "
            f"in {report.seconds:.2f} s ({rate:,.0f} events/s)"
            + (f", {report.checkpoints} checkpoint(s) match a rebuild" if report.checkpoints else "")
            + (f", {report.anchors} anchored head(s) match" if report.anchors else "")
            + f"\nchain head: {report.head}@{report.position}"
        )
        return 0
    print(f"TAMPERED: {report.problem}", file=sys.stderr)
    return 1


def cmd_anchor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from arl.ledger.anchors import anchor_now, append_anchor, read_anchors

    earlier = read_anchors(args.to) if args.to and Path(args.to).exists() and Path(args.to).stat().st_size else []
    with Ledger.open(args.store, read_only=True) as ledger:
        report = verify(ledger, anchors=earlier)
        if not report.ok:
            print(f"TAMPERED: {report.problem}; nothing anchored", file=sys.stderr)
            return 1
        anchor = anchor_now(ledger.ledger_id(), report.position, report.head)
    if args.to:
        append_anchor(args.to, anchor)
    print(anchor.line())
    print(f"(publish this line where the ledger's owner cannot change it; later: "
          f"arl verify --expect-head {anchor.head}@{anchor.position}"
          + (f" or arl verify --anchors {args.to}" if args.to else "") + ")", file=sys.stderr)
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from arl.ledger.store import DDL_VERSION, grant_writer, migrate

    if args.store_command == "migrate":
        with migrate(args.store) as ledger:
            print(f"{ledger.url.display()}: tables, triggers and functions of ledger schema "
                  f"{ledger.meta('schema')} (ddl {DDL_VERSION}) in place, owned by {ledger.url.user or 'you'}")
        return 0
    if args.store_command == "grant":
        with Ledger.open(args.store, create=False) as ledger:
            statements = grant_writer(ledger, args.role)
            where = ledger.url.display()
        print(f"{args.role} may now record in {where} (insert and read; update checkpoints and leases only):")
        for statement in statements:
            print(f"  {statement}")
        return 0
    with Ledger.open(args.store, create=False) as ledger:
        dropped = ledger.drop_checkpoints()
        print(f"{dropped} projection checkpoint(s) removed from {ledger.url.display()}; "
              "each projection is rebuilt from the log when next used")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from arl.runners.config import INSTALL_SANDBOX
    from arl.runners.sandbox import bwrap_path
    from arl.runners.devices import DevicePool, parse
    from arl.runners.worker import Worker

    # One pool of devices for all slots: each trial takes as many as its task needs.
    devices = (parse(args.devices, allocated_by=getattr(args, "allocated_by", None))
               if args.devices is not None else None)
    if devices is not None and args.gpus_per_trial is not None and len(devices.ids) < args.gpus_per_trial:
        raise ArlError(f"--devices {args.devices} gives {len(devices.ids)} device(s), fewer than "
                       f"--gpus-per-trial {args.gpus_per_trial}; add devices")
    slots = args.slots
    if slots is None:  # with devices: room for as many one-device trials as there are devices
        per = args.gpus_per_trial or 1
        slots = max(1, len(devices.ids) // per) if devices is not None and devices.ids else 1
    pool = DevicePool(devices) if devices is not None and devices.ids else None
    with Ledger.open(args.store) as ledger:
        stop = threading.Event()
        workers = [
            Worker(ledger, name=f"{args.name}/{i}" if slots > 1 else args.name,
                   max_attempts=args.max_attempts, pool=pool, sandbox=args.sandbox or "bwrap",
                   say=lambda line: print(line, file=sys.stderr, flush=True))
            for i in range(slots)
        ]

        def shut_down(signum: int, _frame: object) -> None:
            # SIGTERM (scancel, preemption) or SIGUSR1 (Slurm's warning before the time limit):
            # give running trials back at once so another worker re-runs them.
            args.stopped_by = signum
            stop.set()
            for w in workers:
                w.release.set()

        signal.signal(signal.SIGTERM, shut_down)
        signal.signal(signal.SIGUSR1, shut_down)
        if bwrap_path() is None:
            print(f"warning: no sandbox: recipes run without bubblewrap, with your permissions; {INSTALL_SANDBOX}"
                  + ("" if args.sandbox == "none" else "; trials of searches with model-written code stay "
                     "queued (arl worker --sandbox none runs them unsandboxed)"), file=sys.stderr)
        print(f"arl worker {args.name}: {slots} slot(s) on {ledger.url.display()}"
              + (f", {devices.describe()}, each trial takes what its task needs" if devices is not None else
                 ", no devices (trials that need GPUs are left to other workers, and said so)")
              + "; Ctrl-C, SIGTERM or SIGUSR1 stops", file=sys.stderr, flush=True)
        threads = [
            threading.Thread(
                target=w.run, args=(stop,),
                kwargs={"max_trials": args.max_trials, "exit_when_idle": args.exit_when_idle},
            )
            for w in workers
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except KeyboardInterrupt:
            shut_down(signal.SIGINT, None)
            for t in threads:
                t.join()
    return 0


def cmd_slurm(args: argparse.Namespace) -> int:
    import os
    import signal
    from pathlib import Path

    from arl.ledger.projections import Projector
    from arl.runners import slurm

    if args.slurm_command == "submit":
        sub = slurm.Submission(
            store=args.store or os.environ.get("ARL_STORE", ""), workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
            partition=args.partition, account=args.account, time=args.time, qos=args.qos,
            constraint=args.constraint, warn_s=args.warn, requeue=args.requeue,
            log_dir=Path(args.log_dir), sbatch_args=tuple(args.sbatch_arg or ()),
            worker_args=tuple(["--max-attempts", str(args.max_attempts)]
                              + (["--exit-when-idle"] if args.exit_when_idle else [])),
        )
        if not sub.store:
            raise ArlError("arl slurm submit needs --store postgresql://… (or ARL_STORE): the ledger the workers share")
        note = slurm.loopback_note(sub.store)
        if note:
            print(f"arl: note: {note}", file=sys.stderr)
        job = slurm.submit(sub)
        gpus = f"{args.gpus_per_worker} GPU(s)" if args.gpus_per_worker else "no GPU"
        print(f"submitted job array {job}: {args.workers} worker(s), {gpus} and {args.cpus_per_worker} CPU(s) each, "
              f"logs in {Path(args.log_dir).resolve()}/arl-worker-{job}_N.out\n"
              f"(arl slurm status --store … · arl slurm cancel --store … {job})")
        return 0
    if args.slurm_command == "worker":
        name = slurm.runner_name(os.environ)
        devices = slurm.allocated_devices(os.environ, args.gpus_per_worker)
        extra = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args
        argv = ["worker", "--name", name, *(["--store", args.store] if args.store else []),
                *(["--devices", ",".join(devices), "--gpus-per-trial", str(len(devices))] if devices else []),
                *extra]
        wargs = build_parser().parse_args(argv)
        wargs.stopped_by = None
        wargs.allocated_by = "Slurm" if devices else None  # the job's own GPUs: never second-guessed
        code = wargs.func(wargs)
        if args.requeue and wargs.stopped_by == signal.SIGUSR1:
            slurm.requeue_self(os.environ)
            print(f"arl slurm worker {name}: trial given back before the time limit; job requeued", file=sys.stderr)
        return code
    with Ledger.open(args.store, read_only=args.slurm_command == "status") as ledger:
        if args.slurm_command == "status":
            state = Projector(ledger, name="cli").catch_up()
            print(slurm.render_status(slurm.status(ledger, state), ledger.url.display()))
            return 0
        cancelled = slurm.cancel(ledger, args.jobs)
        print(f"cancelled {' '.join(cancelled)}: each worker gives its trial back and exits"
              if cancelled else f"no arl worker jobs of {ledger.url.display()} in Slurm's queue; nothing cancelled")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from arl.tasks.manifest import load_task
    from arl.tasks.registry import available

    for folder in available():
        t = load_task(folder)
        b = t.budgets
        print(f"{t.name:16} {t.objective.metric} ({t.objective.direction}), "
              f"train {b.train_s:g} s, eval {b.eval_s:g} s, {len(t.surfaces)} surfaces — {t.description}")
    return 0


def cmd_task_check(args: argparse.Namespace) -> int:
    from arl.runners.taskcheck import check_task

    task, report = check_task(args.path, run=not args.no_run, recipe_from=args.recipe_from, data=args.data,
                              devices=args.devices)
    print(f"{task.name}: manifest, evaluator and data ok ({task.folder})")
    for line in report.paths:
        print(line)
    if args.no_run:
        return 0
    print(f"base program: {report.label}, {task.objective.metric} = {report.score}, "
          f"run wallclock {report.wall_s:.1f} s" if report.wall_s is not None else
          f"base program: {report.label}")
    for c in report.checks:
        limit = f" (limit {c.limit:g})" if c.limit is not None else ""
        value = f"{c.value:g}" if c.value is not None else "-"
        print(f"  {'pass' if c.passed else 'FAIL'}  {c.name:16} {value}{limit}")
    if report.label != "baseline":
        print(f"the base program does not pass: {report.reason}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from arl.runners.search import SearchConfig, render_summary, run_search

    if not args.task and not args.resume:
        raise ArlError("give a task (e.g. `arl run golf-mini`) or --resume SEARCH")
    if args.task and args.resume:
        raise ArlError(f"--resume continues a search of the task it started with; drop {args.task!r}")
    # Options given on this command line (None: not given; the configuration's default applies).
    given = {k: v for k, v in dict(
        trials=args.trials, workers=args.workers, agents=args.agents,
        lineage=None if args.lineage is None else args.lineage == "on", seed=args.seed, llm_url=args.llm_url,
        llm_model=args.llm_model, inbox=args.inbox, budget_tokens=args.budget_tokens, turns=args.turns,
        recipe_from=args.recipe_from, data=args.data, llm_max_tokens=args.llm_max_tokens,
        baseline_seeds=args.baseline_seeds,
        sandbox=args.sandbox,
    ).items() if v is not None}
    with Ledger.open(args.store) as ledger:
        summary = run_search(ledger, args.task, SearchConfig(**given), name=args.name, resume=args.resume,
                             given=given, devices=args.devices)
        print(render_summary(summary, ledger.url.display()))
    if summary.problem:
        print(summary.problem, file=sys.stderr)
        return 1
    return 0 if summary.stopped != "interrupted" else 130


def cmd_status(args: argparse.Namespace) -> int:
    from arl.ledger.projections import Projector
    from arl.ledger.searches import find_search, search_config
    from arl.runners.search import render_summary, summarize, unclaimed
    from arl.tasks.registry import resolve

    with Ledger.open(args.store, read_only=True) as ledger:
        search_id = find_search(ledger, args.search)
        state = Projector(ledger, name="cli").catch_up()
        started = ledger.stream(search_id)[0]
        trials = int(search_config(ledger, search_id).get("trials", 0))
        metric = started.config.get("metric") or _metric_of(started)
        if started.kind == "import":  # a record: its size is what it holds, its score what the source named
            trials, metric = len(state.trials_of(search_id)), str(started.config.get("score") or metric)
        print(render_summary(summarize(state, search_id, metric, trials,
                                       sandbox=str(started.config.get("sandbox", "bwrap"))), ledger.url.display()))
        if started.kind != "import" and not state.searches[search_id].stop_reason:
            try:
                task = resolve(started.config.get("task_path") or started.task)
            except ArlError:
                task = None  # the task folder is elsewhere: the line says less, not nothing
            waiting = unclaimed(ledger, state, search_id, task)
            if waiting:
                print(f"waiting: {waiting}")
    return 0


def _metric_of(started) -> str:
    from arl.tasks.registry import resolve

    try:
        return resolve(started.config.get("task_path") or started.task).objective.metric
    except ArlError:
        return "score"


def cmd_show(args: argparse.Namespace) -> int:
    from arl.runners.inspect import render_trial

    with Ledger.open(args.store, read_only=True) as ledger:
        print(render_trial(ledger, args.trial))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from arl.runners.evaluate import evaluate_folder, exit_code, render_table

    result = evaluate_folder(args.task, args.dir)
    print(json.dumps(result.to_json(), indent=1) if args.format == "json" else render_table(result))
    return exit_code(result)


def cmd_replay(args: argparse.Namespace) -> int:
    from arl.runners import replay

    modes = [m for m in ("verify", "rerun", "agents") if getattr(args, m)]
    if len(modes) != 1:
        raise ArlError("choose one of --verify, --rerun or --agents")
    with Ledger.open(args.store, create=False, read_only=bool(args.verify)) as ledger:
        if args.verify:
            checks = replay.verify(ledger, args.search)
            bad = [c for c in checks if not c.same]
            for c in checks:
                print(f"{'same' if c.same else 'DIFFERENT':9} {c.projection:32} {c.view:9} "
                      f"live {c.live}  rebuilt {c.rebuilt}")
            print(f"{len(checks) - len(bad)}/{len(checks)} views identical to a rebuild from the first event")
            return 1 if bad else 0
        if args.rerun:
            report = replay.rerun(ledger, args.search, trials=args.trials, workers=args.workers)
            print(report.render())
            return 0
        report = replay.redrive(ledger, args.search)
        print(report.render())
        return 1 if report.mismatches else 0


def cmd_fork(args: argparse.Namespace) -> int:
    from arl.runners import replay
    from arl.runners.search import SearchConfig, render_summary

    config = SearchConfig(trials=args.trials, workers=args.workers, agents=args.agents,
                          lineage=args.lineage == "on", seed=args.seed)
    with Ledger.open(args.store) as ledger:
        summary = replay.fork(ledger, args.trial, config, name=args.name)
        print(render_summary(summary, ledger.url.display()))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from arl.runners.mcp_server import HttpAccess, McpLimits, serve

    access = HttpAccess(host=args.host, port=args.port, token_file=args.token_file, no_auth=args.no_auth,
                        allow_hosts=tuple(args.allow_host or ()))
    limits = McpLimits(submits_per_minute=args.submit_rate, waits_per_session=args.session_waits,
                       waits_total=args.max_waits)
    # stdout is the protocol's channel on stdio: nothing else may be printed there.
    with Ledger.open(args.store, create=False) as ledger:
        serve(ledger, args.search, args.specialist, transport=args.transport, access=access, limits=limits)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from arl.runners.serve import ServeAccess, serve

    access = ServeAccess(host=args.host, port=args.port, token_file=args.token_file,
                         require_token=args.require_token, allow_hosts=tuple(args.allow_host or ()))
    with Ledger.open(args.store, create=False, read_only=True) as ledger:
        serve(ledger, access)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from arl.runners.tokens import TokenFile, default_token_file

    file = TokenFile(args.token_file or default_token_file())
    if args.token_command == "add":
        token = file.add(args.name, specialist=args.specialist)
        print(token)
        print(f"token {args.name!r}" + (f" for specialist {args.specialist}" if args.specialist else "")
              + f" added to {file.path}; it is shown only now (the file keeps its hash). Clients send it as "
              "the header  Authorization: Bearer <token>", file=sys.stderr)
        return 0
    if args.token_command == "revoke":
        file.revoke(args.name)
        print(f"token {args.name!r} revoked in {file.path}; running servers refuse it from their next request",
              file=sys.stderr)
        return 0
    records = file.records()
    if not records:
        print(f"no tokens in {file.path}; `arl token add NAME` makes one", file=sys.stderr)
    for r in records:
        print(f"{r.name:24} {r.specialist or '(any specialist)':20} {r.created_at}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arl", description="arl — the auto-research ledger"
    )
    parser.add_argument("--version", action="version", version=f"arl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "verify",
        help="recompute the hash chain over every event and blob; exit 1 naming the first change",
    )
    _store_arg(p)
    p.add_argument(
        "--expect-head",
        metavar="HEX[@N]",
        action="append",
        help="a chain head noted earlier, as verify or `arl anchor` printed it: HEX@N is the head at "
        "position N (catches a rewrite at or before N, even with the chain recomputed), a bare HEX "
        "the current head; may be repeated",
    )
    p.add_argument("--anchors", metavar="FILE", action="append",
                   help="a file holding anchor lines (`arl anchor --to FILE`, or any saved copy of them): "
                        "check every head in it")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("anchor", help="verify, then print the chain head as a line to publish "
                                      "outside the store (and append it to a file)")
    _store_arg(p)
    p.add_argument("--to", metavar="FILE",
                   help="append the anchor line to FILE, after checking the ledger against the anchors in it")
    p.set_defaults(func=cmd_anchor)

    p = sub.add_parser("store", help="administer the store: migrate its schema, grant a writer role, "
                                     "drop checkpoints")
    store_sub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    q = store_sub.add_parser("migrate", help="create or update the ledger's tables, triggers and functions "
                                             "(PostgreSQL: as the role that owns them)")
    _store_arg(q)
    q.set_defaults(func=cmd_store)
    q = store_sub.add_parser("grant", help="PostgreSQL: let ROLE record (insert and read the ledger; no update, "
                                           "delete, truncate or trigger changes), run as the owner")
    _store_arg(q)
    q.add_argument("role", help="an existing PostgreSQL role (e.g. created with `createuser arl_writer`)")
    q.set_defaults(func=cmd_store)
    q = store_sub.add_parser("drop-checkpoints", help="remove every projection checkpoint "
                                                      "(derived state: rebuilt from the log when next used)")
    _store_arg(q)
    q.set_defaults(func=cmd_store)

    p = sub.add_parser("worker", help="claim submitted trials, run them under budgets, record labels")
    _store_arg(p)
    p.add_argument("--slots", type=int,
                   help="trials run at once (default 1; with --devices, one per device: a trial that "
                        "needs 8 takes 8 of them)")
    p.add_argument("--name", default=hostname(), help="runner name recorded on claims")
    p.add_argument("--max-trials", type=int, help="stop after this many trials (per slot)")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="claims of a trial before a lost runner counts as infra_error")
    p.add_argument("--exit-when-idle", action="store_true", help="stop when the queue is empty")
    p.add_argument("--devices", metavar="0-7|cpu:N",
                   help="GPUs to use (e.g. 0-7 or 0,1,2,3; ids this machine lacks are refused) or cpu:N "
                        "(N CPU ranks, no GPU, for dry runs): each trial takes as many as its task's "
                        "[needs] gpus, exposed as CUDA_VISIBLE_DEVICES; no device serves two trials")
    p.add_argument("--gpus-per-trial", type=int,
                   help="with --devices and no --slots: size the slots for trials of this many devices "
                        "(optional: each trial takes what its task needs)")
    p.add_argument("--sandbox", choices=["bwrap", "none"],
                   help="none: run model-written code even without bubblewrap (default: such trials wait "
                        "for a worker that has it)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("slurm", help="workers as Slurm jobs: submit a job array, list it, cancel it")
    slurm_sub = p.add_subparsers(dest="slurm_command", metavar="ACTION", required=True)
    q = slurm_sub.add_parser("submit", help="submit N workers as one job array, each on the GPUs Slurm allocates it")
    _store_arg(q)
    q.add_argument("--workers", type=int, required=True, metavar="N", help="array tasks: one worker each")
    q.add_argument("--gpus-per-worker", type=int, default=0, metavar="G",
                   help="GPUs each worker's job asks for (--gres=gpu:G; 0: CPU workers, the default)")
    q.add_argument("--cpus-per-worker", type=int, default=1, metavar="C", help="CPUs per worker job (default 1)")
    q.add_argument("--partition", metavar="P")
    q.add_argument("--account", metavar="A")
    q.add_argument("--time", metavar="T", help="time limit per job, as sbatch takes it (e.g. 4:00:00)")
    q.add_argument("--qos", metavar="Q")
    q.add_argument("--constraint", metavar="C", help="node features (sbatch --constraint)")
    q.add_argument("--warn", type=int, default=120, metavar="S",
                   help="seconds before the time limit at which Slurm warns the worker (SIGUSR1; default 120)")
    q.add_argument("--requeue", action="store_true",
                   help="a worker warned of its time limit gives its trial back and requeues its job")
    q.add_argument("--log-dir", default=".", metavar="DIR", help="where job logs go (default: here)")
    q.add_argument("--max-attempts", type=int, default=3,
                   help="claims of a trial before a lost runner counts as infra_error")
    q.add_argument("--exit-when-idle", action="store_true", help="workers stop when the queue is empty")
    q.add_argument("--sbatch-arg", action="append", metavar="ARG",
                   help="another sbatch option, passed as is (repeat; write --sbatch-arg=--mem=32G)")
    q.set_defaults(func=cmd_slurm)
    q = slurm_sub.add_parser("status", help="this ledger's worker jobs: Slurm state, node and the trial each runs")
    _store_arg(q)
    q.set_defaults(func=cmd_slurm)
    q = slurm_sub.add_parser("cancel", help="scancel this ledger's worker jobs (each gives its trial back)")
    _store_arg(q)
    q.add_argument("jobs", nargs="*", metavar="JOB", help="only these jobs (default: all of this ledger's)")
    q.set_defaults(func=cmd_slurm)
    q = slurm_sub.add_parser("worker", help="(inside a job arl slurm submit made) one worker on the job's allocation")
    _store_arg(q)
    q.add_argument("--gpus-per-worker", type=int, default=0, metavar="G")
    q.add_argument("--requeue", action="store_true")
    q.add_argument("worker_args", nargs=argparse.REMAINDER, help="passed on to arl worker")
    q.set_defaults(func=cmd_slurm)

    p = sub.add_parser("run", help="run a search: specialists propose, workers run, the ledger records")
    _store_arg(p)
    p.add_argument("task", nargs="?", help="built-in task name or task folder")
    # Defaults are SearchConfig's: None here tells an option given again to --resume from one left out.
    p.add_argument("--trials", type=int, help="trials charged to the budget (default 30)")
    p.add_argument("--workers", type=int,
                   help="in-process workers (0: run `arl worker` elsewhere; default 1)")
    p.add_argument("--agents", choices=["tuner", "llm", "agentic", "mcp", "inbox", "random", "tpe"],
                   help="specialist backend (default tuner); agentic: multi-turn tool-using model sessions; mcp: specialists "
                        "connect through `arl mcp`; random and tpe (Optuna) are baselines over the same knobs")
    p.add_argument("--lineage", choices=["on", "off"],
                   help="off: specialists see only the best program (the control arm; default on)")
    p.add_argument("--seed", type=int, help="the specialists' seed (default 0)")
    p.add_argument("--baseline-seeds", type=int, metavar="K",
                   help="measure the starting program on K seeds first: their spread is the noise floor the "
                        "search judges by (a manifest floor it contradicts is reported)")
    p.add_argument("--name", help="a name for the search")
    p.add_argument("--resume", metavar="SEARCH",
                   help="continue a stopped search (id prefix or name); --trials, --workers and "
                        "--budget-tokens may change it, recorded as SearchResumed")
    p.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--llm-model", help="model name to ask for")
    p.add_argument("--llm-max-tokens", type=int, help="cap on each model reply, in tokens")
    p.add_argument("--inbox", metavar="FOLDER", help="folder watched for proposal files (--agents inbox)")
    p.add_argument("--recipe-from", metavar="PATH",
                   help="adapter tasks: your checkout of the recipe (else ARL_RECIPE_FROM_<TASK>, arl.toml)")
    p.add_argument("--data", metavar="PATH", help="adapter tasks: your data folder (else ARL_DATA_<TASK>, arl.toml)")
    p.add_argument("--budget-tokens", type=int, metavar="N",
                   help="stop cleanly once the search's recorded model usage reaches N tokens")
    p.add_argument("--turns", type=int, help="turn limit of one agentic session (default 8)")
    p.add_argument("--sandbox", choices=["bwrap", "none"],
                   help="bwrap (default): model-written code (llm, agentic, mcp, inbox) runs only under "
                        "bubblewrap; none: allow it without one (recorded in the search, shown in summaries)")
    p.add_argument("--devices", metavar="0-7|cpu:N",
                   help="devices of the in-process workers (default: the visible GPUs, for tasks that "
                        "need them); cpu:N = N CPU ranks, no GPU; one worker per set of the task's gpus")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("replay", help="replay a search: verify projections, re-run trials, re-drive agents")
    _store_arg(p)
    p.add_argument("search", help="search id prefix or name")
    p.add_argument("--verify", action="store_true", help="rebuild every projection and compare with the live ones")
    p.add_argument("--rerun", action="store_true", help="re-execute the recorded programs as a new search")
    p.add_argument("--agents", action="store_true", help="re-drive the agents from recorded views and replies")
    p.add_argument("--trials", metavar="A..B", help="with --rerun: only these trial numbers")
    p.add_argument("--workers", type=int, default=1, help="with --rerun: in-process workers")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("fork", help="start a new search from one trial's program")
    _store_arg(p)
    p.add_argument("trial", help="trial id prefix, or SEARCH#SEQ")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--agents", choices=["tuner", "random", "tpe"], default="tuner")
    p.add_argument("--lineage", choices=["on", "off"], default="on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name")
    p.set_defaults(func=cmd_fork)

    p = sub.add_parser("status", help="progress and outcome of a search (default: the latest)")
    _store_arg(p)
    p.add_argument("search", nargs="?", help="search id prefix or name")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("show", help="one trial: hypothesis, diff, run, checks and label")
    _store_arg(p)
    p.add_argument("trial", help="trial id prefix, or SEARCH#SEQ (e.g. 3f2a#12), or #SEQ in the latest search")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("evaluate", help="judge the logs and artifacts of a run made elsewhere, running nothing")
    p.add_argument("task", help="built-in task name or task folder")
    p.add_argument("dir", help="folder with the run's logs (*.log, *.txt) and/or seed<N>/ output folders")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("mcp", help="serve the ledger tools over MCP: an MCP client (Claude Code, Codex, …) "
                                   "becomes a specialist of a search")
    _store_arg(p)
    p.add_argument("--search", metavar="S", help="search id prefix or name (default: the latest)")
    p.add_argument("--specialist", required=True, metavar="NAME",
                   help="the specialist (a surface of the search's task) the client acts as")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (the client starts `arl mcp`) or streamable HTTP for remote agents")
    p.add_argument("--host", default="127.0.0.1", help="with --transport http: address to listen on")
    p.add_argument("--port", type=int, default=8000, help="with --transport http: port (default 8000)")
    _token_file_arg(p)
    p.add_argument("--no-auth", action="store_true",
                   help="with --transport http on a loopback address only: accept clients without a token")
    p.add_argument("--allow-host", metavar="NAME", action="append",
                   help="with --transport http: also answer requests for this host name or address "
                        "(this machine's names and addresses are answered already)")
    p.add_argument("--submit-rate", type=float, default=12.0, metavar="N",
                   help="submissions per minute per caller (token), in bursts up to N (default 12; 0: no limit)")
    p.add_argument("--session-waits", type=int, default=4, metavar="N",
                   help="wait calls one MCP session may have pending at once (default 4)")
    p.add_argument("--max-waits", type=int, default=64, metavar="N",
                   help="wait calls pending at once in the whole server (default 64)")
    p.set_defaults(func=cmd_mcp)

    p = sub.add_parser("serve", help="a live dashboard of the ledger's searches in the browser (read-only)")
    _store_arg(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other address requires a token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _token_file_arg(p)
    p.add_argument("--require-token", action="store_true", help="ask for a token on loopback too")
    p.add_argument("--allow-host", metavar="NAME", action="append",
                   help="also answer requests for this host name or address")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="bearer tokens for arl's HTTP interfaces (arl mcp --transport http, arl serve)")
    token_sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    q = token_sub.add_parser("add", help="make a token and print it once (the token file keeps its hash)")
    q.add_argument("name", help="the identity recorded with what the token does, e.g. alice or opt-agent")
    q.add_argument("--specialist", metavar="NAME", help="the one specialist this token may act as")
    _token_file_arg(q)
    q.set_defaults(func=cmd_token)
    q = token_sub.add_parser("list", help="the tokens' names, specialists and dates (never the tokens)")
    _token_file_arg(q)
    q.set_defaults(func=cmd_token)
    q = token_sub.add_parser("revoke", help="remove a token")
    q.add_argument("name")
    _token_file_arg(q)
    q.set_defaults(func=cmd_token)

    p = sub.add_parser("tasks", help="list the tasks arl knows (built-in and on ARL_TASK_PATH)")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("task", help="work with task folders")
    task_sub = p.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    p = task_sub.add_parser("check", help="validate a task folder and dry-run its base program")
    p.add_argument("path", help="task folder or built-in task name")
    p.add_argument("--no-run", action="store_true", help="validate only; do not run the base program")
    p.add_argument("--recipe-from", metavar="PATH",
                   help="adapter tasks: your checkout of the recipe's repository (else ARL_RECIPE_FROM_<TASK>, arl.toml)")
    p.add_argument("--data", metavar="PATH", help="adapter tasks: your data folder (else ARL_DATA_<TASK>, arl.toml)")
    p.add_argument("--devices", metavar="0-7|cpu:N",
                   help="devices the base program runs on (default: the visible GPUs, for tasks that need them)")
    p.set_defaults(func=cmd_task_check)

    try:
        from arl.queries.cli import register as register_queries
    except ImportError:  # the forensics commands are being built alongside
        register_queries = None
    if register_queries is not None:
        register_queries(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import os
    import sqlite3
    import warnings

    from eventsourcing.persistence import PersistenceError

    from arl.ledger.errors import LedgerWarning
    from arl.ledger.store import StoreURL, default_store_url, store_failure

    from arl.runners.sandbox import keep_secrets_out_of_environ, take_back_secrets

    restarted = argv is None and take_back_secrets()
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    if argv is None and not restarted and func in (cmd_worker, cmd_run, cmd_task_check, cmd_replay):
        keep_secrets_out_of_environ(sys.argv[1:])  # these commands run recipes
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, LedgerWarning):
            print(f"arl: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    try:
        code = func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `arl verify | head -1`: the reader has what it wanted. Nothing more can be
        # printed, and Python's own flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process ended by SIGPIPE
    except ArlError as e:
        print(f"arl: error: {e}", file=sys.stderr)
        return 2
    except (PersistenceError, sqlite3.Error) as e:  # the database underneath, e.g. a lock held too long
        url = StoreURL.parse(getattr(args, "store", None) or default_store_url())
        print(f"arl: error: {store_failure(e, url)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arl: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
