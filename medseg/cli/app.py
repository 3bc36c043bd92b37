"""The ``medseg`` command group: one-line errors (exit 1), one-line usage errors (exit 2), ``--debug``."""

from __future__ import annotations

import functools
import sys
import warnings

import click

from medseg import __version__
from medseg.errors import MedsegError, OptionError, describe_error


def _fail(message: str) -> None:
    click.echo(f"medseg: error: {message}", err=True)
    sys.exit(1)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """medseg's own warnings (e.g. DICOM tilt corrected) as one line; others as Python prints them."""
    if getattr(category, "medseg_warning", False):
        click.echo(f"medseg: warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def handle_errors(fn):
    """Turn errors into one line (:func:`medseg.errors.describe_error`) and exit code 1 unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", UserWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except KeyboardInterrupt:
            _fail("interrupted")
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OptionError as err:  # an option the chosen model does not take: a usage error, as click's
            if debug:
                raise
            raise click.UsageError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - never a bare traceback for users
            if debug:
                raise
            message = describe_error(err)
            known = isinstance(err, (MedsegError, MemoryError)) or (isinstance(err, OSError) and err.strerror)
            _fail(message if known else f"{message} (rerun with --debug for the traceback)")

    return wrapper


class _Group(click.Group):
    """medseg's command group: a usage error is one line, ``medseg: error: <problem> (see 'medseg CMD
    --help')``, and exit code 2, as click's usage errors exit but without its usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:  # `medseg` alone, or a group without a command: the help
            err.show()
            sys.exit(err.exit_code)
        except click.UsageError as err:
            where = " ".join(["medseg", *(err.ctx.command_path.split()[1:] if err.ctx is not None else [])])
            click.echo(f"medseg: error: {err.format_message().rstrip('.')} (see '{where} --help')", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """medseg: segment CT/MR volumes into label maps that keep the scan's exact geometry.

    \b
    Quick start:
      medseg infer sample_data/chest_ct.nii.gz --stats --preview
      medseg models
    """
