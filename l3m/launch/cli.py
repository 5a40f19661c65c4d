"""`l3m launch` (torchrun, one or many nodes) and `l3m submit --slurm` (an sbatch job that requeues)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from l3m.cli import positive_int
from l3m.launch.torchrun import LaunchError

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def add_parsers(sub) -> None:
    s = sub.add_parser("launch", help="print and run the torchrun command of a training, on one or many nodes")
    s.add_argument("items", nargs="*", metavar="FILE|PATH=VALUE", help="one .l3m file, and overrides")
    s.add_argument("--nnodes", type=positive_int, help="nodes (default: SLURM_JOB_NUM_NODES, else 1)")
    s.add_argument("--nproc-per-node", type=positive_int, metavar="G",
                   help="processes (GPUs) per node (default: SLURM_GPUS_ON_NODE, else 1)")
    s.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous host, the same on every node "
                   "(default: MASTER_ADDR:MASTER_PORT, else the first node of a SLURM allocation)")
    s.add_argument("--rdzv-id", metavar="ID", help="run id shared by every node (default: SLURM_JOB_ID)")
    s.add_argument("--node-rank", type=int, metavar="R", help="this node's rank (default: SLURM_NODEID, NODE_RANK)")
    _train_arguments(s)
    s.add_argument("--dry-run", action="store_true", help="print the command without running it")
    s.set_defaults(func=cmd_launch)

    s = sub.add_parser("submit", help="write and submit a SLURM job that trains and requeues on preemption "
                       "(needs the 'slurm' extra: submitit)")
    s.add_argument("items", nargs="*", metavar="FILE|PATH=VALUE", help="one .l3m file, and overrides")
    s.add_argument("--slurm", action="store_true", help="submit to SLURM (the only scheduler so far)")
    s.add_argument("--nodes", type=positive_int, metavar="N")
    s.add_argument("--gpus-per-node", type=positive_int, metavar="G", help="also the tasks (ranks) per node")
    s.add_argument("--time", metavar="HH:MM:SS", help="time limit of one job (it requeues itself at the limit)")
    s.add_argument("--partition", metavar="P")
    s.add_argument("--account", metavar="A")
    s.add_argument("--job-name", metavar="NAME", help="default: l3m-<file stem>")
    s.add_argument("--signal-delay", type=positive_int, default=120, metavar="S",
                   help="SIGTERM this many seconds before the limit, to save a checkpoint (default 120)")
    s.add_argument("--max-requeues", type=positive_int, default=20, metavar="K",
                   help="requeues at the time limit before giving up (preemptions do not count; default 20)")
    s.add_argument("--setup", action="append", default=[], metavar="CMD",
                   help="a shell line run before the training (module load ..., source venv); repeatable")
    _train_arguments(s)
    s.add_argument("--dry-run", action="store_true",
                   help="write the sbatch script into the working directory and print it; submit nothing")
    s.set_defaults(func=cmd_submit)


def _train_arguments(s) -> None:
    s.add_argument("--output", "-o", metavar="RUN_DIR", help="run directory (default runs/<file stem>)")
    s.add_argument("--extension", action="append", default=[], metavar="MODULE",
                   help="import a Python module of registered blocks (repeatable)")


def _file_and_overrides(args) -> tuple[str, list[str]]:
    files = [a for a in args.items if "=" not in a]
    if len(files) != 1:
        raise LaunchError("give exactly one .l3m file")
    return files[0], [a for a in args.items if "=" in a]


def _check_mesh(command: str, path: str, overrides: list[str], world: int, extensions: list[str]) -> int:
    from l3m.cli import _print_diagnostics
    from l3m.launch.mesh import check_mesh

    check = check_mesh(path, overrides, world, tuple(extensions))
    if check.exit_code == EXIT_ERRORS and check.compiled is not None:
        _print_diagnostics(check.compiled)
    if check.exit_code:
        print(f"l3m {command}: {check.message}", file=sys.stderr)
    return check.exit_code


def _run_dir(path: str, output: str | None) -> Path:
    return Path(output or Path("runs") / Path(path).stem).absolute()


def cmd_launch(args: argparse.Namespace) -> int:
    from l3m.launch.torchrun import format_command, resolve, torchrun_command, torchrun_executable

    try:
        path, overrides = _file_and_overrides(args)
        rdzv = resolve(args.nnodes, args.nproc_per_node, args.rdzv_endpoint, args.rdzv_id, args.node_rank)
    except LaunchError as e:
        print(f"l3m launch: {e}", file=sys.stderr)
        return EXIT_USAGE
    code = _check_mesh("launch", path, overrides, rdzv.world_size, args.extension)
    if code:
        return code
    train_args = [path, *overrides]
    if args.output:
        train_args += ["--output", args.output]
    train_args += [a for m in args.extension for a in ("--extension", m)]
    cmd = torchrun_command(rdzv, train_args, torchrun_executable())
    print(format_command(cmd), flush=True)
    if args.dry_run:
        return EXIT_OK
    try:
        return subprocess.run(cmd).returncode
    except OSError as e:
        print(f"l3m launch: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        return _submit(args)
    except LaunchError as e:
        print(f"l3m submit: {e}", file=sys.stderr)
        return EXIT_USAGE


def _submit(args: argparse.Namespace) -> int:
    if not args.slurm:
        raise LaunchError("say where to submit: --slurm (the only scheduler so far)")
    path, overrides = _file_and_overrides(args)
    for flag in ("nodes", "gpus_per_node", "time", "partition"):
        if getattr(args, flag) is None:
            raise LaunchError(f"--{flag.replace('_', '-')} is required")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise LaunchError("needs submitit: pip install 'l3m[slurm]'") from None
    from l3m.launch.slurm import SlurmSpec, TrainJob, parse_time, sbatch_script, submit

    spec = SlurmSpec(args.nodes, args.gpus_per_node, parse_time(args.time), args.partition, args.account,
                     args.job_name or f"l3m-{Path(path).stem}", args.signal_delay, args.max_requeues, args.setup)
    code = _check_mesh("submit", path, overrides, spec.world_size, args.extension)
    if code:
        return code
    run_dir = _run_dir(path, args.output)
    folder = run_dir / "slurm"
    if args.dry_run:
        script = sbatch_script(spec, folder)
        out = Path(f"{spec.job_name}.sbatch")
        try:
            out.write_text(script)
        except OSError as e:
            raise LaunchError(f"cannot write {out}: {e.strerror}") from None
        print(script, end="")
        print(f"wrote {out} (not submitted; logs would go to {folder})", file=sys.stderr)
        return EXIT_OK
    job = TrainJob(str(Path(path).absolute()), overrides, str(run_dir), str(Path.cwd()), list(args.extension))
    submitted = submit(job, spec, folder)
    print(f"submitted job {submitted.job_id}: {spec.nodes} node(s) x {spec.gpus_per_node} GPU(s), "
          f"run directory {run_dir}, logs {folder}")
    return EXIT_OK
