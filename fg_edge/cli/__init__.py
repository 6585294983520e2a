"""The `fg-edge` command line.

Each command lives in its own module (`fg_edge/cli/<name>.py`) and imports torch / transformers only inside the
command body, so `fg-edge --help` is instant; options every command shares are in `fg_edge/cli/options.py`.
"""

from __future__ import annotations

import logging
import sys

import click


#: top-level modules that only the training / compile install (`pip install "fg-edge[train]"`) brings
TRAIN_MODULES = frozenset({"torch", "transformers", "accelerate", "safetensors", "onnx", "optimum", "matplotlib"})


class FgEdgeGroup(click.Group):
    """Turns fg-edge's own errors into one clear line and exit status 1 (no traceback); so is a command run on the
    torch-free device install that needs the training install."""

    def invoke(self, ctx):
        from fg_edge.errors import FgEdgeError, os_error_message

        try:
            return super().invoke(ctx)
        except FgEdgeError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException("out of memory; use a smaller --batch-size / --max-length / model, or a "
                                       "machine with more memory") from None
        except OSError as exc:   # disk full, read-only, permission denied where no check could see it coming
            if isinstance(exc, (BrokenPipeError, click.exceptions.ClickException)):
                raise
            logging.getLogger("fg_edge").debug("file-system error", exc_info=True)
            raise click.ClickException(os_error_message(exc)) from None
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in TRAIN_MODULES:
                raise
            command = ctx.invoked_subcommand or "this command"
            raise click.ClickException(f"`fg-edge {command}` needs the training install (no module named {top!r}): "
                                       f"pip install 'fg-edge[train]'") from None


def _launched_rank() -> int:
    """This process's rank as a launcher set it (torchrun / accelerate launch / MPI); 0 when not launched."""
    import os

    for key in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _print_version(ctx: click.Context, param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from fg_edge.runtimes.environment import version_line

    click.echo(version_line())
    ctx.exit()


@click.group(cls=FgEdgeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version (and ONNX Runtime's, torch's, transformers' when installed) and exit.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """FineGates for edge deployment: learn gates, compile the sparsity away, ship ONNX.

    \b
    Typical session:
      fg-edge train sentence-transformers/all-MiniLM-L6-v2 --task classification \\
          --train SST-2/train.tsv --dev SST-2/dev.tsv --max-train 4000 --output runs/minilm
      fg-edge inspect runs/minilm --plot runs/minilm/gates.png
    """
    if quiet and verbose:
        raise click.UsageError("give -q/--quiet or -v/--verbose, not both")
    ctx.obj = {"quiet": quiet, "verbose": verbose}
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if verbose == 0:   # the command line's own choice of verbosity: fg-edge's progress notes at INFO
        logging.getLogger("fg_edge").setLevel(logging.WARNING if quiet else logging.INFO)
    if _launched_rank() > 0:   # torchrun / accelerate launch: the main process alone logs (and writes)
        logging.getLogger("fg_edge").setLevel(logging.ERROR)


def _register() -> None:
    from fg_edge.cli.bench import bench_cmd
    from fg_edge.cli.compile import compile_cmd
    from fg_edge.cli.env import env_cmd
    from fg_edge.cli.eval import eval_cmd
    from fg_edge.cli.finetune import finetune_cmd
    from fg_edge.cli.inspect import inspect_cmd
    from fg_edge.cli.run import run_cmd
    from fg_edge.cli.train import train_cmd

    for name, cmd in (("finetune", finetune_cmd), ("train", train_cmd), ("inspect", inspect_cmd), ("compile", compile_cmd),
                      ("run", run_cmd), ("bench", bench_cmd), ("eval", eval_cmd), ("env", env_cmd)):
        cli.add_command(cmd, name)


_register()


def _on_signal(signum, frame) -> None:
    from fg_edge.errors import Terminated

    raise Terminated(signum)


def main() -> None:  # console-script entry point
    """Run the CLI. SIGTERM and SIGHUP unwind like Ctrl-C: every temporary output is removed and a worker process
    is stopped before fg-edge exits with 128 + the signal number."""
    import signal

    from fg_edge.errors import Terminated

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _on_signal)
    try:
        cli(prog_name="fg-edge")
    except Terminated as exc:
        click.echo(f"fg-edge: stopped by signal {exc.signum}; nothing partial was left behind", err=True)
        sys.exit(128 + exc.signum)


if __name__ == "__main__":
    main()
