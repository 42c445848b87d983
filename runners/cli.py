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


def cmd_verify(args: argparse.Namespace) -> int:
    with Ledger.open(args.store, create=False) as ledger:
        def progress(n: int) -> None:
            print(f"  … {n:,} events checked", file=sys.stderr)

        report = verify(ledger, expect_head=args.expect_head, progress=progress)
        where = ledger.url.display()
    if report.ok:
        rate = report.events / report.seconds if report.seconds else 0.0
        print(
            f"ok: {report.events:,} events and {report.blobs:,} blobs in {where} verified "
            f"in {report.seconds:.2f} s ({rate:,.0f} events/s)\nchain head: {report.head}"
        )
        return 0
    print(f"TAMPERED: {report.problem}", file=sys.stderr)
    return 1


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from arl.runners.worker import Worker

    from arl.tasks.adapters import device_sets, parse_devices

    devices = parse_devices(args.devices) if args.devices else []
    # Each slot gets a disjoint set of devices; --gpus-per-trial sets its size.
    sets = device_sets(devices, args.gpus_per_trial)[: args.slots] if devices else []
    if devices and len(sets) < args.slots:
        raise ArlError(f"--devices {args.devices} gives {len(sets)} set(s) of {args.gpus_per_trial} "
                       f"for {args.slots} slots; add devices or lower --slots")
    with Ledger.open(args.store) as ledger:
        stop = threading.Event()
        workers = [
            Worker(ledger, name=f"{args.name}/{i}" if args.slots > 1 else args.name,
                   max_attempts=args.max_attempts, devices=sets[i] if sets else None)
            for i in range(args.slots)
        ]

        def shut_down(signum: int, _frame: object) -> None:
            # SIGTERM: give running trials back at once so another worker re-runs them.
            stop.set()
            for w in workers:
                w.release.set()

        signal.signal(signal.SIGTERM, shut_down)
        print(f"arl worker {args.name}: {args.slots} slot(s) on {ledger.url.display()}"
              + (f", devices {' '.join(','.join(d) for d in sets)}" if sets else "")
              + "; Ctrl-C or SIGTERM stops", file=sys.stderr)
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

    task, report = check_task(args.path, run=not args.no_run, recipe_from=args.recipe_from, data=args.data)
    print(f"{task.name}: manifest, evaluator and data ok ({task.folder})")
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
    ).items() if v is not None}
    with Ledger.open(args.store) as ledger:
        summary = run_search(ledger, args.task, SearchConfig(**given), name=args.name, resume=args.resume,
                             given=given)
        print(render_summary(summary, ledger.url.display()))
    if summary.problem:
        print(summary.problem, file=sys.stderr)
        return 1
    return 0 if summary.stopped != "interrupted" else 130


def cmd_status(args: argparse.Namespace) -> int:
    from arl.ledger.projections import Projector
    from arl.ledger.searches import find_search, search_config
    from arl.runners.search import render_summary, summarize

    with Ledger.open(args.store, create=False) as ledger:
        search_id = find_search(ledger, args.search)
        state = Projector(ledger, name="cli").catch_up()
        started = ledger.stream(search_id)[0]
        trials = int(search_config(ledger, search_id).get("trials", 0))
        metric = started.config.get("metric") or _metric_of(started)
        if started.kind == "import":  # a record: its size is what it holds, its score what the source named
            trials, metric = len(state.trials_of(search_id)), str(started.config.get("score") or metric)
        print(render_summary(summarize(state, search_id, metric, trials), ledger.url.display()))
    return 0


def _metric_of(started) -> str:
    from arl.tasks.registry import resolve

    try:
        return resolve(started.config.get("task_path") or started.task).objective.metric
    except ArlError:
        return "score"


def cmd_show(args: argparse.Namespace) -> int:
    from arl.runners.inspect import render_trial

    with Ledger.open(args.store, create=False) as ledger:
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
    with Ledger.open(args.store, create=False) as ledger:
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
    from arl.runners.mcp_server import serve

    # stdout is the protocol's channel on stdio: nothing else may be printed there.
    with Ledger.open(args.store, create=False) as ledger:
        serve(ledger, args.search, args.specialist, transport=args.transport, host=args.host, port=args.port)
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
        metavar="HEX",
        help="chain head recorded earlier (printed by a previous verify): "
        "also catches removal or rewrite of the newest events",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("worker", help="claim submitted trials, run them under budgets, record labels")
    _store_arg(p)
    p.add_argument("--slots", type=int, default=1, help="trials run at once (default 1)")
    p.add_argument("--name", default=hostname(), help="runner name recorded on claims")
    p.add_argument("--max-trials", type=int, help="stop after this many trials (per slot)")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="claims of a trial before a lost runner counts as infra_error")
    p.add_argument("--exit-when-idle", action="store_true", help="stop when the queue is empty")
    p.add_argument("--devices", metavar="0,1,…",
                   help="accelerators to use (e.g. 0,1,2,3 or 0-7): each slot gets its own, "
                        "exposed to recipes as CUDA_VISIBLE_DEVICES; no GPU serves two trials")
    p.add_argument("--gpus-per-trial", type=int, default=1,
                   help="with --devices: GPUs per slot (a slot runs only tasks needing that many)")
    p.set_defaults(func=cmd_worker)

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
    p.set_defaults(func=cmd_mcp)

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
    p.set_defaults(func=cmd_task_check)

    try:
        from arl.queries.cli import register as register_queries
    except ImportError:  # the forensics commands are being built alongside
        register_queries = None
    if register_queries is not None:
        register_queries(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except ArlError as e:
        print(f"arl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
